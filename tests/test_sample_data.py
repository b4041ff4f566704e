"""The packaged ISBI 2012 sample: shapes, dtypes, classes, and strokes a user could have painted."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msd._sample_data import CLASS_NAMES, load_sample, read_sample


@pytest.fixture(scope="module")
def layers():
    return {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in load_sample()}


def test_layers_shapes_dtypes(layers):
    assert list(layers) == ["EM (ISBI 2012 crop)", "strokes", "ground truth"]
    image, strokes, truth = (layers[n][0] for n in layers)
    assert [layers[n][2] for n in layers] == ["image", "labels", "labels"]
    for array in (image, strokes, truth):
        assert array.shape == (8, 256, 256) and array.dtype == np.uint8
    assert image.std() > 10  # real EM, not a blank
    assert set(np.unique(truth)) == {1, 2}
    assert set(np.unique(strokes)) == {0, 1, 2}
    assert layers["ground truth"][1]["visible"] is False
    assert all("Cardona" in kwargs["metadata"]["credit"] for _, kwargs, _ in layers.values())
    assert load_sample.__doc__ and "Arganda-Carreras" in load_sample.__doc__


def test_strokes_sparse_and_correct(layers):
    strokes, truth = layers["strokes"][0], layers["ground truth"][0]
    painted = [z for z in range(strokes.shape[0]) if strokes[z].any()]
    assert painted == read_sample()["stroke_slices"].tolist() and len(painted) == 2
    for z in painted:
        fraction = np.count_nonzero(strokes[z]) / strokes[z].size
        assert 0.001 <= fraction <= 0.03, fraction
        assert {1, 2} <= set(np.unique(strokes[z]))
    labelled = strokes > 0
    np.testing.assert_array_equal(strokes[labelled], truth[labelled])  # every stroke pixel on its own class


def test_strokes_colormap_per_class(layers):
    from napari.layers import Labels

    layer = Labels(layers["strokes"][0], **layers["strokes"][1])
    colors = layer.colormap.color_dict
    assert layer.metadata["class_names"] == CLASS_NAMES
    assert not np.allclose(colors[1], colors[2])
    assert colors[0][3] == 0  # unlabeled stays transparent
