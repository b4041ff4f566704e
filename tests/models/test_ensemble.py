"""The ensemble network: mean probabilities as logits, sizes from its members, one model file, tiled = whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.base.inputs import InputSpec
from napari_msd.inference import Predictor
from napari_msd.inference.predictor import activation_maps
from napari_msd.inference.uncertainty import disagreement
from napari_msd.io.model_file import load_model, save_model
from napari_msd.models import ARCHITECTURES, Ensemble, MSDNet, UNet, build_model, ensemble_config
from napari_msd.models.registry import PRESETS

from helpers.networks import NORM, image, metadata, msd, unet


def _ensemble(*networks) -> Ensemble:
    return Ensemble.of(networks).eval()


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


@pytest.fixture
def mixed() -> Ensemble:
    """Two MS-D from different seeds and a U-Net, three classes, random heads (outputs far from uniform)."""
    return _ensemble(msd(seed=0), msd(seed=1), unet(seed=2))


def test_softmax_of_the_output_is_the_members_mean_probability(mixed):
    x = torch.randn(2, 1, 40, 36)
    with torch.no_grad():
        members = mixed.member_probabilities(x)
        logits = mixed(x)
        own = torch.stack([torch.softmax(m(x), 1) for m in mixed.members])
    assert members.shape == (3, 2, 3, 40, 36)
    assert torch.allclose(members, own)
    assert torch.allclose(torch.softmax(logits, 1), own.mean(0), atol=1e-6)
    assert torch.allclose(logits, torch.log(own.mean(0)), atol=1e-5)  # log of the mean, not a mean of logits
    assert not torch.allclose(own[0], own[1], atol=1e-2)  # members from other seeds really differ


def test_a_certain_member_never_gives_log_zero():
    net = MSDNet(1, 2, depth=2)
    with torch.no_grad():
        net.head_bias.copy_(torch.tensor([200.0, -200.0]))  # class 2 has probability 0 in float32
    logits = _ensemble(net, net)(torch.zeros(1, 1, 8, 8))
    assert torch.isfinite(logits).all()
    assert torch.allclose(torch.softmax(logits, 1)[:, 0], torch.ones(1, 8, 8))


def test_sizes_receptive_field_and_alignment_come_from_the_members():
    deep = UNet(1, 2, depth=3, base_channels=4)
    shallow = UNet(1, 2, depth=2, base_channels=4)
    ms = MSDNet(1, 2, depth=6)
    ensemble = _ensemble(ms, shallow, deep)
    assert (ensemble.in_channels, ensemble.out_channels, ensemble.ndim, ensemble.n_members) == (1, 2, 2, 3)
    assert ensemble.receptive_field == max(ms.receptive_field, shallow.receptive_field, deep.receptive_field)
    assert ensemble.pool_factors == (8, 8)  # the least common multiple of 4 and 8; MS-D does not pool
    assert _ensemble(ms, MSDNet(1, 2, depth=3)).pool_factors == ()  # no member pools: tiles start anywhere
    assert Predictor(ensemble, metadata(ensemble)).align(2) == (8, 8)
    assert activation_maps(ensemble) > max(activation_maps(m) for m in ensemble.members)


def test_members_that_do_not_fit_together_are_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        _ensemble(MSDNet(1, 2, depth=2), MSDNet(1, 3, depth=2))
    assert "must agree on input channels, classes and dimensions" in _one_line(err)
    with pytest.raises(ValueError) as err:
        _ensemble(MSDNet(1, 2, depth=2), MSDNet(1, 2, depth=2, ndim=3))
    assert "msd (1, 2, 3)" in _one_line(err)
    with pytest.raises(ValueError) as err:
        Ensemble([])
    assert "list of members" in _one_line(err)
    with pytest.raises(ValueError) as err:
        Ensemble([{"arch": "ensemble", "config": {}}])
    assert "itself an ensemble" in _one_line(err)
    with pytest.raises(ValueError) as err:
        build_model("ensemble", {"members": [{"arch": "msd", "config": {"depth": 2}}]})  # no sizes anywhere
    _one_line(err)


def test_registered_with_a_preset_that_the_engine_and_the_model_dock_complete():
    assert ARCHITECTURES["ensemble"] is Ensemble
    preset = PRESETS["ensemble"]
    assert preset == ensemble_config("msd", PRESETS["msd"], 3)
    net = build_model("ensemble", {**preset, "in_channels": 3, "out_channels": 4, "ndim": 2})
    assert isinstance(net, Ensemble) and net.n_members == 3 and (net.in_channels, net.out_channels) == (3, 4)
    assert all(m.depth == 100 for m in net.members)
    again = build_model("ensemble", net.config())  # the configuration alone rebuilds it, sizes included
    assert again.config() == net.config()
    assert sum(p.numel() for p in net.parameters()) == 3 * sum(p.numel() for p in net.members[0].parameters())
    with pytest.raises(ValueError):
        ensemble_config("msd", {}, 0)


def test_one_model_file_holds_the_ensemble_and_gives_the_same_outputs(mixed, tmp_path):
    path = save_model(tmp_path / "ensemble.msd", mixed, metadata(mixed))
    loaded, meta = load_model(path)
    assert isinstance(loaded, Ensemble) and meta.arch == "ensemble" and meta.config == mixed.config()
    assert meta.receptive_field == mixed.receptive_field
    assert {k.split(".")[1] for k in loaded.state_dict()} == {"0", "1", "2"}
    assert all(k.startswith("members.") for k in loaded.state_dict())
    x = torch.randn(1, 1, 33, 41)
    with torch.no_grad():
        assert torch.equal(loaded(x), mixed(x))
        assert torch.equal(loaded.member_probabilities(x), mixed.member_probabilities(x))


def test_tiles_with_the_receptive_field_as_halo_equal_whole_image_prediction(mixed):
    predictor = Predictor(mixed, metadata(mixed), batch_size=3)
    img = image((100, 90))
    whole = predictor.predict(img)
    assert whole.std() > 0.01
    shape, block_shape, halo = img.shape, (40, 36), predictor.receptive_field
    probs = np.zeros((3, *shape), np.float32)
    labels = np.zeros(shape, np.uint8)
    dis = np.zeros(shape, np.float32)
    blocks = list(predictor.run(img, labels, probs, block_shape=block_shape, halo=halo, disagreement=True))
    assert len(blocks) == len(predictor.plan(shape, block_shape, halo)) > 2
    for done in blocks:
        dis[done.block.out] = done.disagreement
    assert np.abs(probs - whole).max() < 1e-5
    with torch.no_grad():  # the members' disagreement of the whole image in one pass
        x = torch.from_numpy(NORM(img))[None, None]
        reference = disagreement(mixed.member_probabilities(x)[:, 0].numpy())
    assert reference.max() > 0.1  # the members do disagree somewhere
    assert np.abs(dis - reference).max() < 1e-5
    one = Predictor(msd(), metadata(msd()))  # one network has no members: nothing to disagree about
    assert all(d.disagreement is None for d in one.blocks(img, disagreement=True))


def test_volumes_tile_too(tmp_path):
    ensemble = _ensemble(msd(in_channels=3, seed=0), msd(in_channels=3, seed=1))
    spec = InputSpec("2.5d", 3)
    predictor = Predictor(ensemble, metadata(ensemble, spec), batch_size=3)
    img = image((6, 70, 60))
    whole = predictor.predict(img)
    probs = np.zeros((3, *img.shape), np.float32)
    list(predictor.run(img, None, probs, block_shape=(2, 32, 25), halo=predictor.receptive_field))
    assert np.abs(probs - whole).max() < 1e-5


def test_export_refuses_an_ensemble_in_one_line(mixed):
    from napari_msd.io.bioimageio import PackageError, _check_model

    with pytest.raises(PackageError) as err:
        _check_model(mixed, metadata(mixed))
    assert "'ensemble' cannot be exported" in _one_line(err)
