"""A network with a forest's buffers: built from its configuration, saved with its state dict, refused by ensembles."""

from __future__ import annotations

import pytest
import torch

from napari_msd.models.forest_buffers import ForestBuffers, forest_of, model_config
from napari_msd.models.registry import build_model

FOREST = {"n_classes": 2, "classes": [1, 2], "n_features": 49, "sigmas": [1.0], "node_counts": [3, 5], "depths": [1, 2]}


def test_build_model_attaches_the_forest_and_model_config_rebuilds_it():
    net = build_model("msd", {"in_channels": 3, "out_channels": 2, "depth": 4, "forest": FOREST})
    forest = forest_of(net)
    assert isinstance(forest, ForestBuffers) and forest.channels == 2
    assert net.forest.left.shape == (8,) and net.forest.value.shape == (8, 2)
    assert "forest.threshold_bits" in net.state_dict()
    twin = build_model("msd", model_config(net))
    twin.load_state_dict(net.state_dict())
    assert model_config(twin) == model_config(net) and model_config(net)["forest"] == FOREST
    plain = build_model("msd", {"in_channels": 1, "out_channels": 2, "depth": 4})
    assert forest_of(plain) is None and "forest" not in model_config(plain)


def test_the_forest_does_not_take_part_in_the_forward_pass():
    net = build_model("msd", {"in_channels": 3, "out_channels": 2, "depth": 4, "forest": FOREST})
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 2, 16, 16)
    assert all(not name.startswith("forest.") for name, _ in net.named_parameters())


def test_an_ensemble_or_a_bad_forest_description_is_one_line():
    with pytest.raises(ValueError, match="an ensemble takes no forest channels"):
        build_model("ensemble", {"members": [], "forest": FOREST})
    with pytest.raises(ValueError, match="invalid forest description"):
        build_model("msd", {"in_channels": 1, "out_channels": 2, "depth": 2, "forest": {"n_classes": 2}})
