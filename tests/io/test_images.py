"""Image readers: every format round-trips lazily to numpy, and every bad input is one clear line."""

from __future__ import annotations

import os
import pickle
import time
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
import zarr

from napari_msd.io import ImageReadError, LazyArray, image_info, images, open_image, read_labels
from napari_msd.io.images import ZARR_SEPARATOR

ISBI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2012" / "train-volume.tif"
RNG = np.random.default_rng(0)


def _vol(shape=(6, 40, 50), dtype=np.uint16) -> np.ndarray:
    return RNG.integers(0, 1000, size=shape).astype(dtype)


def _check_roundtrip(image: LazyArray, ref: np.ndarray) -> None:
    assert isinstance(image, LazyArray)
    assert image.shape == ref.shape and image.ndim == ref.ndim and image.dtype == ref.dtype
    keys = [(...,), (0,), (slice(1, 3), slice(5, 20), 7), (Ellipsis, slice(2, 9)), (-1,)]
    for key in keys:
        if len(key) > ref.ndim:
            continue
        got = image[key]
        assert type(got) is np.ndarray, key
        np.testing.assert_array_equal(got, ref[key])
    np.testing.assert_array_equal(np.asarray(image), ref)


def _error(spec, opener=open_image) -> str:
    with pytest.raises(ImageReadError) as info:
        opener(spec)
    message = str(info.value)
    assert "\n" not in message and message.startswith(os.fspath(spec)), message
    return message


# -- TIFF ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("shape", [(40, 50), (6, 40, 50)])
def test_tiff_roundtrip(tmp_path, shape, compression):
    ref = _vol(shape)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, ref, compression=compression)
    image = open_image(path)
    _check_roundtrip(image, ref)
    assert image.format == "tiff"
    if compression is None:
        assert image.chunks is None  # memory-mapped
    else:
        assert image.chunks is not None  # read page by page through tifffile's zarr store


def test_tiff_big_endian_and_float(tmp_path):
    ref = _vol().astype(">f4") - 500
    tifffile.imwrite(tmp_path / "be.tiff", ref)
    image = open_image(tmp_path / "be.tiff")
    assert image.dtype == np.float32 and image[2].dtype.isnative
    np.testing.assert_array_equal(image[2], ref[2])


def test_tiff_slices_are_independent_copies(tmp_path):
    ref = _vol()
    tifffile.imwrite(tmp_path / "img.tif", ref)
    image = open_image(tmp_path / "img.tif")
    block = image[1:3]
    block += 1  # writable, and not a view of the (read-only) memory map
    np.testing.assert_array_equal(image[1:3], ref[1:3])


def test_tiff_tagged_planar_rgb_is_read_as_grey_slices_with_a_note(tmp_path, caplog):
    """Three grey pages tagged RGB with separate planes: napari shows 3 slices, and so do we (with one note)."""
    ref = _vol((3, 64, 64), np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", ref, photometric="rgb", planarconfig="separate")
    with caplog.at_level("WARNING", logger="napari_msd.io.images"):
        image = open_image(tmp_path / "planar.tif")
    _check_roundtrip(image, ref)
    notes = [r.getMessage() for r in caplog.records if r.name == "napari_msd.io.images"]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "planar.tif" in notes[0] and "tagged as planar RGB" in notes[0] and "read as 3 grey slices" in notes[0]
    tifffile.imwrite(tmp_path / "rgb.tif", ref.transpose(1, 2, 0), photometric="rgb")  # interleaved: true colour
    assert "colour (RGB/RGBA)" in _error(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "rgb_vol.tif", np.stack([ref] * 2), photometric="rgb", planarconfig="separate")
    assert "colour (RGB/RGBA)" in _error(tmp_path / "rgb_vol.tif")  # a planar colour volume stays refused


@pytest.mark.skipif(not ISBI.exists(), reason="ISBI 2012 data not available")
def test_isbi_tiff_is_lazy_and_matches_tifffile():
    image = open_image(ISBI)
    assert image.shape == (30, 512, 512) and image.dtype == np.uint8
    assert image.chunks == (1, 512, 512)  # zlib pages read one at a time
    ref = tifffile.imread(ISBI)
    for z in (0, 29):
        np.testing.assert_array_equal(image[z], ref[z])
    np.testing.assert_array_equal(image[3:5, 100:200, 7], ref[3:5, 100:200, 7])


def test_tiff_without_lazy_access_is_read_whole_only_when_small(tmp_path, monkeypatch):
    ref = _vol()
    tifffile.imwrite(tmp_path / "c.tif", ref, compression="zlib")

    def no_zarr(*args, **kwargs):
        raise RuntimeError("no zarr store today")

    monkeypatch.setattr(zarr, "open", no_zarr)
    assert images.MAX_EAGER_TIFF_BYTES == 2 * 1024**3
    _check_roundtrip(open_image(tmp_path / "c.tif"), ref)
    monkeypatch.setattr(images, "MAX_EAGER_TIFF_BYTES", ref.nbytes - 1)
    assert "too large to load whole; convert it to a zarr array" in _error(tmp_path / "c.tif")


# -- zarr and OME-Zarr -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_roundtrip(tmp_path, zarr_format):
    ref = _vol()
    path = tmp_path / "vol.zarr"
    z = zarr.create_array(path, shape=ref.shape, chunks=(2, 16, 16), dtype=ref.dtype, zarr_format=zarr_format)
    z[...] = ref
    image = open_image(str(path))
    _check_roundtrip(image, ref)
    assert image.format == "zarr" and image.chunks == (2, 16, 16)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_array_path_and_separator(tmp_path, zarr_format):
    ref = _vol((30, 20), np.float32)
    root = zarr.open_group(tmp_path / "data.zarr", mode="w", zarr_format=zarr_format)
    root.create_group("em").create_array("raw", data=ref, chunks=(10, 10))
    _check_roundtrip(open_image(f"{tmp_path / 'data.zarr'}{ZARR_SEPARATOR}em/raw"), ref)
    _check_roundtrip(open_image(tmp_path / "data.zarr" / "em" / "raw"), ref)
    assert ZARR_SEPARATOR == "::"


def test_zarr_group_without_array_lists_arrays(tmp_path):
    root = zarr.open_group(tmp_path / "vol.zarr", mode="w")
    root.create_array("raw", shape=(4, 5), dtype="u1")
    root.create_array("labels", shape=(4, 5), dtype="u1")
    message = _error(str(tmp_path / "vol.zarr"))
    assert "is a zarr group; name an array" in message
    assert "vol.zarr::labels" in message and "(arrays: labels, raw)" in message
    message = _error(f"{tmp_path / 'vol.zarr'}::mito")
    assert "has no 'mito'" in message and "labels, raw" in message


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler:DeprecationWarning")  # ome-zarr's own 0.4 writer
def test_ome_zarr_opens_full_resolution_squeezed(tmp_path, version):
    from ome_zarr import writer
    from ome_zarr.format import FormatV04, FormatV05

    ref = _vol((8, 64, 64), np.uint8)
    fmt, zarr_format = (FormatV04(), 2) if version == "0.4" else (FormatV05(), 3)
    root = zarr.open_group(tmp_path / "ome.zarr", mode="w", zarr_format=zarr_format)
    writer.write_image(ref[None, None], root, axes="tczyx", fmt=fmt, scale_factors=(2,))
    image = open_image(tmp_path / "ome.zarr")
    assert image.format == "ome-zarr" and image.source.shape == (1, 1, 8, 64, 64)
    _check_roundtrip(image, ref)
    assert image[(Ellipsis, 3)].shape == (8, 64)
    assert image[2, 3, 4] == ref[2, 3, 4]
    assert len(image.chunks) == 3


def test_ome_zarr_multichannel_is_refused(tmp_path):
    from ome_zarr import writer

    root = zarr.open_group(tmp_path / "two.zarr", mode="w")
    writer.write_image(_vol((2, 4, 32, 32), np.uint8), root, axes="czyx", scale_factors=(2,))
    assert "2 channels" in _error(tmp_path / "two.zarr")


def test_large_zarr_opens_instantly_without_allocating(tmp_path):
    path = tmp_path / "big.zarr"
    z = zarr.create_array(path, shape=(2000, 2000, 2000), chunks=(64, 64, 64), dtype="uint8", fill_value=0)
    z[5, 6, 7] = 9
    tracemalloc.start()
    start = time.perf_counter()
    image = open_image(path)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.shape == (2000, 2000, 2000) and image.nbytes == 8 * 10**9
    assert elapsed < 2.0 and peak < 20 * 2**20
    assert image[5, 6, 7] == 9 and image[1000, :4, :4].sum() == 0
    assert image_info(path)["chunks"] == (64, 64, 64)


# -- MRC and .npy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 40), (5, 30, 40)])
@pytest.mark.parametrize("suffix", [".mrc", ".rec"])
def test_mrc_roundtrip(tmp_path, shape, suffix):
    ref = (RNG.standard_normal(shape) * 10).astype(np.float32)
    path = tmp_path / f"tomo{suffix}"
    with mrcfile.new(path) as mrc:
        mrc.set_data(ref)
    image = open_image(path)
    assert image.format == "mrc"
    _check_roundtrip(image, ref)


def test_npy_roundtrip_and_pickle(tmp_path):
    ref = _vol((4, 30, 20), np.int16)
    np.save(tmp_path / "stack.npy", ref)
    image = open_image(tmp_path / "stack.npy")
    _check_roundtrip(image, ref)
    again = pickle.loads(pickle.dumps(image))  # reopens by spec, never pickles the pixels
    assert len(pickle.dumps(image)) < 1000
    np.testing.assert_array_equal(again[1], ref[1])


def test_leading_singletons_squeezed_lazily(tmp_path):
    ref = _vol((1, 1, 3, 10, 12), np.float32)
    np.save(tmp_path / "tczyx.npy", ref)
    image = open_image(tmp_path / "tczyx.npy")
    assert image.shape == (3, 10, 12) and image.drop_axes == (0, 1)
    _check_roundtrip(image, ref[0, 0])
    np.save(tmp_path / "zcyx.npy", ref[0].transpose(1, 0, 2, 3))  # (3, 1, 10, 12): a size-1 channel axis
    assert open_image(tmp_path / "zcyx.npy").shape == (3, 10, 12)
    np.save(tmp_path / "one.npy", ref[0, 0, :1])  # (1, 10, 12) stays a one-slice volume
    assert open_image(tmp_path / "one.npy").shape == (1, 10, 12)


def test_image_info(tmp_path):
    np.save(tmp_path / "a.npy", _vol((3, 4, 5), np.uint8))
    info = image_info(tmp_path / "a.npy")
    assert info == {
        "spec": os.fspath(tmp_path / "a.npy"),
        "format": "npy",
        "shape": (3, 4, 5),
        "dtype": "uint8",
        "chunks": None,
        "nbytes": 60,
    }


# -- labels --------------------------------------------------------------------------------------------------------


def test_read_labels_accepts_integers_and_refuses_float(tmp_path):
    labels = np.zeros((10, 10), np.uint8)
    labels[2:4, 2:4] = 2
    np.save(tmp_path / "labels.npy", labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.npy")[...], labels)
    np.save(tmp_path / "mask.npy", labels > 0)
    assert read_labels(tmp_path / "mask.npy").dtype == bool
    np.save(tmp_path / "float.npy", labels.astype(np.float32))
    message = _error(tmp_path / "float.npy", read_labels)
    assert "labels must be integers (0 = unlabeled, 1..K = classes); got float32" in message


# -- errors --------------------------------------------------------------------------------------------------------


def _bad_files(tmp: Path) -> dict[str, tuple[Path | str, str]]:
    ref = _vol()
    cases: dict[str, tuple[Path | str, str]] = {}
    cases["missing"] = (tmp / "nope.tif", "no such file")
    cases["missing zarr::"] = (f"{tmp / 'nope.zarr'}::raw", "no such file")
    (tmp / "plain").mkdir()
    cases["plain directory"] = (tmp / "plain", "not a zarr store")
    (tmp / "empty.zarr").mkdir()
    cases["empty .zarr directory"] = (tmp / "empty.zarr", "not a zarr store")
    cases["separator on a file"] = (f"{tmp / 'img.npy'}::raw", "not one")
    np.save(tmp / "img.npy", ref)
    (tmp / "img.png").write_bytes(b"\x89PNG\r\n")
    cases["unknown extension"] = (tmp / "img.png", "unsupported image format '.png'")
    (tmp / "empty.tif").write_bytes(b"")
    cases["empty file"] = (tmp / "empty.tif", "empty")
    (tmp / "junk.tif").write_bytes(os.urandom(3000))
    cases["not a TIFF"] = (tmp / "junk.tif", "cannot read TIFF")
    for compression in (None, "zlib"):
        tifffile.imwrite(tmp / "whole.tif", ref, compression=compression)
        data = (tmp / "whole.tif").read_bytes()
        (tmp / f"cut_{compression}.tif").write_bytes(data[: len(data) // 2])
        cases[f"truncated TIFF {compression}"] = (tmp / f"cut_{compression}.tif", "truncated or corrupt")
    (tmp / "junk.mrc").write_bytes(os.urandom(5000))
    cases["random bytes .mrc"] = (tmp / "junk.mrc", "MRC")
    with mrcfile.new(tmp / "whole.mrc") as mrc:
        mrc.set_data(ref.astype(np.float32))
    (tmp / "cut.mrc").write_bytes((tmp / "whole.mrc").read_bytes()[:-500])
    cases["truncated MRC"] = (tmp / "cut.mrc", "truncated or corrupt")
    np.save(tmp / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    cases["object .npy"] = (tmp / "objects.npy", "object dtype")
    (tmp / "cut.npy").write_bytes((tmp / "img.npy").read_bytes()[:200])
    cases["truncated .npy"] = (tmp / "cut.npy", "cannot read .npy")
    np.save(tmp / "rgb.npy", np.zeros((20, 30, 3), np.uint8))
    cases["RGB"] = (tmp / "rgb.npy", "RGB")
    tifffile.imwrite(tmp / "rgb.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    cases["RGB TIFF"] = (tmp / "rgb.tif", "RGB")
    np.save(tmp / "4d.npy", np.zeros((2, 3, 4, 5), np.float32))
    cases["true 4D"] = (tmp / "4d.npy", "is 4-D")
    np.save(tmp / "1d.npy", np.zeros(7, np.float32))
    cases["1D"] = (tmp / "1d.npy", "is 1-D")
    np.save(tmp / "complex.npy", np.zeros((4, 4), np.complex64))
    cases["complex"] = (tmp / "complex.npy", "complex64")
    return cases


def test_every_bad_input_is_one_line_naming_the_path(tmp_path):
    for case, (spec, expected) in _bad_files(tmp_path).items():
        message = _error(spec)
        assert expected in message, f"{case}: {message}"


def test_zarr_array_given_an_array_path_and_corrupt_metadata(tmp_path):
    zarr.create_array(tmp_path / "a.zarr", shape=(4, 4), dtype="u1")
    assert "is a zarr array, not a group" in _error(f"{tmp_path / 'a.zarr'}::raw")
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    assert "cannot open zarr store" in _error(tmp_path / "bad.zarr")
    zarr.open_group(tmp_path / "nothing.zarr", mode="w")
    assert "no arrays" in _error(tmp_path / "nothing.zarr")
