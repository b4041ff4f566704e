"""Cutting network inputs: 2D slices, 2.5D stacks, 3D boxes, orientations, and their labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msd.base.inputs import InputSpec, box_start, mirror, read_input, read_target

VOL = np.arange(12 * 40 * 50, dtype=np.int32).reshape(12, 40, 50)  # every voxel value is unique
IMG = VOL[5]


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


# -- 2D images --------------------------------------------------------------------------------------


def test_2d_cut_of_2d_image_matches_numpy():
    x, box = read_input(IMG, InputSpec(), center=(20, 25), size=(16, 10))
    assert x.shape == (1, 16, 10)
    np.testing.assert_array_equal(x[0], IMG[12:28, 20:30])
    assert box == (slice(12, 28), slice(20, 30))


@pytest.mark.parametrize("center", [(0, 0), (39, 49), (-5, 100), (2, 47)])
def test_windows_stay_inside_small_images(center):
    x, box = read_input(IMG, InputSpec(), center=center, size=(32, 32))
    assert x.shape == (1, 32, 32)
    for s, n in zip(box, IMG.shape):
        assert 0 <= s.start and s.stop <= n and s.stop - s.start == 32
    np.testing.assert_array_equal(x[0], IMG[box])
    # the whole image as one window
    x, box = read_input(IMG, InputSpec(), center=center, size=IMG.shape)
    np.testing.assert_array_equal(x[0], IMG)


def test_window_near_the_edge_still_contains_the_center():
    x, box = read_input(IMG, InputSpec(), center=(38, 1), size=(16, 16))
    assert box == (slice(24, 40), slice(0, 16))
    assert IMG[38, 1] in x
    assert box_start(38, 16, 40) == 24 and box_start(1, 16, 50) == 0 and box_start(20, 16, 40) == 12


# -- volumes: 2D slices through three orientations ----------------------------------------------------


def test_2d_cut_of_volume_is_one_xy_plane():
    spec = InputSpec()
    x, box = read_input(VOL, spec, center=(7, 20, 25), size=(16, 16))
    assert x.shape == (1, 16, 16)
    np.testing.assert_array_equal(x[0], VOL[7, 12:28, 17:33])
    y = read_target(VOL, box, spec)
    np.testing.assert_array_equal(y, x[0])


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        ("xy", VOL[6, 12:28, 15:35]),  # in-plane (y, x), plane z = 6
        ("xz", VOL[0:12, 20, 15:35]),  # in-plane (z, x), plane y = 20 (z window clamped to 0..12)
        ("yz", VOL[0:12, 12:28, 25]),  # in-plane (z, y), plane x = 25
    ],
)
def test_orientations_cut_the_right_planes(orientation, expected):
    spec = InputSpec(orientations=("xy", "xz", "yz"))
    size = {"xy": (16, 20), "xz": (12, 20), "yz": (12, 16)}[orientation]
    x, box = read_input(VOL, spec, center=(6, 20, 25), size=size, orientation=orientation)
    assert x.shape == (1, *expected.shape)
    np.testing.assert_array_equal(x[0], expected)
    np.testing.assert_array_equal(read_target(VOL, box, spec, orientation), expected)


# -- 2.5D stacks -----------------------------------------------------------------------------------------


def test_2_5d_stacks_neighbouring_slices_as_channels():
    spec = InputSpec(mode="2.5d", slices=5)
    assert spec.in_channels == 5 and spec.model_ndim == 2
    x, box = read_input(VOL, spec, center=(6, 20, 25), size=(8, 8))
    assert x.shape == (5, 8, 8)
    for k, z in enumerate(range(4, 9)):
        np.testing.assert_array_equal(x[k], VOL[z, 16:24, 21:29])
    # the labels are those of the centre slice
    np.testing.assert_array_equal(read_target(VOL, box, spec), x[2])


@pytest.mark.parametrize(("z", "expected_z"), [(0, [2, 1, 0, 1, 2]), (1, [1, 0, 1, 2, 3]), (11, [9, 10, 11, 10, 9])])
def test_2_5d_neighbours_are_mirrored_at_first_and_last_slice(z, expected_z):
    spec = InputSpec(mode="2.5d", slices=5)
    x, box = read_input(VOL, spec, center=(z, 10, 10), size=(8, 8))
    np.testing.assert_array_equal(x, VOL[expected_z, 6:14, 6:14])
    np.testing.assert_array_equal(read_target(VOL, box, spec), VOL[z, 6:14, 6:14])


def test_2_5d_in_xz_stacks_along_y():
    spec = InputSpec(mode="2.5d", slices=3, orientations=("xz",))
    x, box = read_input(VOL, spec, center=(6, 0, 25), size=(12, 10), orientation="xz")
    assert x.shape == (3, 12, 10)
    for k, y in enumerate([1, 0, 1]):  # mirrored at y = 0
        np.testing.assert_array_equal(x[k], VOL[:, y, 20:30])
    np.testing.assert_array_equal(read_target(VOL, box, spec, "xz"), VOL[:, 0, 20:30])


def test_mirror_reflects_like_the_networks():
    np.testing.assert_array_equal(mirror(np.array([-3, -2, -1, 0, 4, 5, 6, 7]), 5), [3, 2, 1, 0, 4, 3, 2, 1])
    np.testing.assert_array_equal(mirror(np.array([-2, 0, 2]), 1), [0, 0, 0])
    # far outside: repeated reflection stays inside
    assert set(mirror(np.arange(-20, 20), 3)) <= {0, 1, 2}


# -- 3D boxes -----------------------------------------------------------------------------------------------


def test_3d_cut_is_a_box_with_aligned_labels():
    spec = InputSpec(mode="3d")
    assert spec.in_channels == 1 and spec.model_ndim == 3
    x, box = read_input(VOL, spec, center=(11, 20, 0), size=(8, 16, 16))
    assert x.shape == (1, 8, 16, 16)
    np.testing.assert_array_equal(x[0], VOL[4:12, 12:28, 0:16])
    labels = VOL % 7
    np.testing.assert_array_equal(read_target(labels, box, spec), labels[4:12, 12:28, 0:16])


def test_cut_labels_align_with_image_for_every_mode_and_orientation():
    labels = (VOL * 7919) % 5  # any labels: alignment means the same box of both arrays
    for spec, orientation in [
        (InputSpec(), "xy"),
        (InputSpec(orientations=("xy", "yz")), "yz"),
        (InputSpec(mode="2.5d", slices=3, orientations=("xz",)), "xz"),
    ]:
        x, box = read_input(VOL, spec, center=(3, 30, 40), size=(10, 10), orientation=orientation)
        centre = x[spec.in_channels // 2]
        np.testing.assert_array_equal(read_target(labels, box, spec, orientation), (centre * 7919) % 5)


def test_only_the_requested_box_is_read():
    class Recorder:
        shape, dtype = VOL.shape, VOL.dtype

        def __init__(self):
            self.keys = []

        def __getitem__(self, key):
            self.keys.append(key)
            return VOL[key]

    rec = Recorder()
    read_input(rec, InputSpec(mode="2.5d", slices=3), center=(6, 20, 25), size=(8, 8))
    assert len(rec.keys) == 1
    assert VOL[rec.keys[0]].size == 3 * 8 * 8


# -- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mode": "2.5d", "slices": 4}, "odd"),
        ({"mode": "2.5d", "slices": 1}, "odd"),
        ({"mode": "2d", "slices": 3}, "2.5d"),
        ({"mode": "4d"}, "mode"),
        ({"orientations": ("xy", "zx")}, "orientations"),
        ({"orientations": ()}, "orientations"),
        ({"mode": "3d", "orientations": ("xz",)}, "orientation"),
    ],
)
def test_invalid_specs_are_refused_with_one_line(kwargs, words):
    with pytest.raises(ValueError) as err:
        InputSpec(**kwargs)
    assert words in _one_line(err)


def test_check_image_refuses_what_cannot_be_cut():
    InputSpec().check_image(2)
    InputSpec(mode="2.5d", slices=3).check_image(3)
    InputSpec(mode="3d").check_image(3)
    with pytest.raises(ValueError) as err:
        InputSpec(mode="2.5d", slices=5).check_image(2, "cells")
    assert "2D" in _one_line(err) and "cells" in str(err.value)
    with pytest.raises(ValueError) as err:
        InputSpec(mode="3d").check_image(2)
    _one_line(err)
    with pytest.raises(ValueError) as err:
        InputSpec(orientations=("xy", "xz")).check_image(2)
    _one_line(err)
    with pytest.raises(ValueError) as err:
        InputSpec().check_image(4)
    assert "4 dimensions" in _one_line(err)


def test_spec_round_trips_through_plain_data():
    for spec in [InputSpec(), InputSpec(mode="2.5d", slices=5, orientations=("xy", "xz", "yz")), InputSpec(mode="3d")]:
        data = spec.to_dict()
        assert isinstance(data["orientations"], list)
        assert InputSpec.from_dict(data) == spec
    assert InputSpec.from_dict({}) == InputSpec()
