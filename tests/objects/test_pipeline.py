"""From semantic labels to measured objects in one generator, as the CLI and a napari worker drive it."""

from __future__ import annotations

import numpy as np
import zarr

from napari_msd.objects import MEMORY, Scale, iter_objects, label_components, measure_objects, run_to_end, split_objects

from helpers.arrays import CountingArray
from helpers.objects import assert_same_objects, ball, class_blobs


def test_without_split_measures_the_components_as_they_are_written():
    semantic = class_blobs((10, 26, 24), seed=0)
    image = np.random.default_rng(0).random(semantic.shape)
    events = iter_objects(
        semantic, classes=[2, 3], class_names=["bg", "membrane", "mito"], image=image, block_shape=(5, 9, 8)
    )
    stages = []
    while True:
        try:
            stages.append(next(events).stage)
        except StopIteration as done:
            result = done.value
            break
    assert stages == ["label"] * 18 + ["write"] * 18
    expected = label_components(semantic, classes=[2, 3])
    assert_same_objects(result.instances, expected.labels)
    reference = measure_objects(
        result.instances, semantic=semantic, image=image, class_names=["bg", "membrane", "mito"]
    )
    for name in reference.names:
        column = result.table.columns[name]
        if column.dtype == object:
            assert column.tolist() == reference.columns[name].tolist()
        else:
            np.testing.assert_allclose(column, reference.columns[name], rtol=1e-9)
    assert set(result.table.columns["class"]) == {"membrane", "mito"}


def test_with_split_the_pieces_keep_their_class_and_nothing_is_read_whole(tmp_path):
    shape = (40, 70)
    semantic = np.zeros(shape, np.uint8)
    semantic[ball(shape, (20, 20), 10) | ball(shape, (20, 37), 10)] = 2  # two touching disks
    semantic[0:5, 60:70] = 1
    counting = CountingArray(semantic, chunks=(20, 35))
    out = zarr.create_array(tmp_path / "objects.zarr", shape=shape, chunks=(20, 35), dtype="uint32")
    result = run_to_end(
        iter_objects(
            counting,
            split=True,
            class_names=["square", "disk"],
            scale=Scale((2.0, 2.0), "nm"),
            block_shape=(20, 35),
            out=out,
            scratch=MEMORY,
        )
    )
    assert max(counting.reads) <= 20 * 35
    assert result.instances is out and result.split is not None
    assert sorted(result.table.columns["class"].tolist()) == ["disk", "disk", "square"]
    pieces = split_objects(label_components(semantic).labels)
    assert_same_objects(out[...], pieces.labels)
    np.testing.assert_allclose(result.table.columns["area_nm2"], result.table.columns["area_px"] * 4.0)


def test_out_none_keeps_no_labels_but_still_measures():
    semantic = class_blobs((30, 30), seed=1)
    result = run_to_end(iter_objects(semantic, out=None, min_size=4, block_shape=(8, 8)))
    assert result.instances is None
    assert len(result.table) == label_components(semantic, min_size=4).n_objects
    assert result.table.columns["area_px"].min() >= 4
