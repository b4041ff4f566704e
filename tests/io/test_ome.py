"""OME-Zarr 0.5 prediction outputs: metadata, the multiscale pyramid, and ome-zarr-py's and the plugin's readers."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_msd.io.images import open_image
from napari_msd.io.outputs import OutputError, create_or_resume

from helpers.outputs import NAMES, job_truth, make_job, write_blocks


def test_ome_zarr_metadata_pyramid_and_readers(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    path = tmp_path / "pred.ome.zarr"
    job = make_job(input_shape=(10, 36, 44), block_shape=(4, 8, 8), output_format="ome-zarr")
    out = create_or_resume(path, job)
    truth = job_truth(job)
    write_blocks(out, list(np.ndindex(*job.grid)), truth)
    assert create_or_resume(path, job).is_complete()
    out.finalize()
    labels, probs = truth

    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == 3
    ome = dict(root.attrs)["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space", "space"]
    paths = [d["path"] for d in ms["datasets"]]
    assert paths == ["s0", "s1", "s2", "s3"]  # 36x44 -> 18x22 -> 9x11 -> 5x6 fits a block
    scales = [d["coordinateTransformations"][0] for d in ms["datasets"]]
    assert all(t["type"] == "scale" for t in scales)
    assert [t["scale"] for t in scales] == [
        [1.0, 1.0, 1.0, 1.0],
        [1.0, 2.0, 2.0, 2.0],
        [1.0, 4.0, 4.0, 4.0],
        [1.0, 8.0, 8.0, 8.0],
    ]
    assert [c["label"] for c in ome["omero"]["channels"]] == NAMES
    assert root["s1"].shape == (3, 5, 18, 22) and root["s3"].shape == (3, 2, 5, 6)

    assert dict(root["labels"].attrs)["ome"]["labels"] == ["prediction"]
    label_ome = dict(root["labels/prediction"].attrs)["ome"]
    image_label = label_ome["image-label"]
    assert image_label["version"] == "0.5"
    assert image_label["colors"][1] == {"label-value": 2, "rgba": [255, 0, 0, 255]}
    names = {p["label-value"]: p["class"] for p in image_label["properties"]}
    assert names == {1: "background", 2: "membrane", 3: "mitochondrion"}
    assert [d["path"] for d in label_ome["multiscales"][0]["datasets"]] == paths

    # the pyramid: labels by striding, probabilities by the mean of 2x2x2 cells
    label_levels = out.open_labels(multiscale=True)
    np.testing.assert_array_equal(label_levels[1][...], labels[::2, ::2, ::2])
    np.testing.assert_array_equal(label_levels[3][...], labels[::8, ::8, ::8])
    stored = np.rint(probs * 255).astype(np.uint8)
    cell_mean = stored.reshape(3, 5, 2, 18, 2, 22, 2).mean(axis=(2, 4, 6), dtype=np.float32)
    np.testing.assert_array_equal(out.open_probabilities(multiscale=True)[1][...], np.rint(cell_mean).astype(np.uint8))

    # spec validation (ome-zarr-models) and ome-zarr-py's reader
    Image.from_zarr(root)
    ImageLabel.from_zarr(root["labels/prediction"])
    nodes = list(Reader(parse_url(str(path)))())
    assert [tuple(d.shape) for d in nodes[0].data][:2] == [(3, 10, 36, 44), (3, 5, 18, 22)]
    label_node = next(n for n in nodes if "properties" in n.metadata)
    assert {k: v["class"] for k, v in label_node.metadata["properties"].items()} == names
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), labels)

    # the plugin's own reader (napari's File > Open needs the napari-ome-zarr plugin for OME-Zarr)
    np.testing.assert_array_equal(open_image(f"{path}::labels/prediction")[...], labels)


def test_ome_zarr_labels_only_and_float16_2d(tmp_path):
    from ome_zarr_models.v05.image_label import ImageLabel

    job = make_job(
        input_shape=(21, 30), block_shape=(8, 8), halo=(2, 2), probabilities="none", output_format="ome-zarr"
    )
    out = create_or_resume(tmp_path / "labels.ome.zarr", job)
    labels, _ = job_truth(job)
    write_blocks(out, list(np.ndindex(*job.grid)))
    out.finalize()
    root = zarr.open_group(str(out.path), mode="r")
    ome = dict(root.attrs)["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["y", "x"]
    assert {p["class"] for p in ome["image-label"]["properties"]} == set(NAMES)
    ImageLabel.from_zarr(root)
    np.testing.assert_array_equal(open_image(out.path)[...], labels)
    levels = out.open_labels(multiscale=True)
    assert [lv.shape for lv in levels] == [(21, 30), (11, 15), (6, 8)]
    np.testing.assert_array_equal(levels[2][...], labels[::4, ::4])
    with pytest.raises(OutputError, match="no probabilities"):
        out.open_probabilities()

    job16 = make_job(
        input_shape=(21, 30), block_shape=(8, 8), probabilities="float16", labels=False, output_format="ome-zarr"
    )
    out16 = create_or_resume(tmp_path / "p16.ome.zarr", job16)
    _, probs = job_truth(job16)
    write_blocks(out16, list(np.ndindex(*job16.grid)))
    out16.finalize()
    p0, p1 = out16.open_probabilities(multiscale=True)[:2]
    assert p0.dtype == np.float16 and p1.shape == (3, 11, 15)
    padded = np.pad(p0[...].astype(np.float32), [(0, 0), (0, 1), (0, 0)], mode="edge")
    expected = padded.reshape(3, 11, 2, 15, 2).mean(axis=(2, 4)).astype(np.float16)
    np.testing.assert_allclose(p1[...].astype(np.float32), expected.astype(np.float32), rtol=1e-3)
    ms = dict(zarr.open_group(str(out16.path), mode="r").attrs)["ome"]["multiscales"][0]
    assert ms["datasets"][1]["coordinateTransformations"][1] == {"type": "translation", "translation": [0.0, 0.5, 0.5]}
