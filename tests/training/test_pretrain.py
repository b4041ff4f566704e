"""Self-supervised pretraining: blind-spot masking, the pretrainer, files, cache keys and transfer to a network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.base.inputs import InputSpec
from napari_msd.models.registry import build_model
from napari_msd.training.pretrain import (
    NEIGHBOURHOOD,
    PretrainConfig,
    PretrainedBody,
    Pretrainer,
    PretrainError,
    apply_pretrained,
    blind_spot_mask,
    cache_key,
    cache_path,
    check_compatible,
    image_fingerprint,
    is_head,
    load_pretrained,
    save_pretrained,
)

SMALL = {"depth": 6}


def _image(shape=(3, 64, 64), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    stripes = (np.sin(xx / 3.0) > 0).astype(np.float32) * 100
    return (stripes + rng.normal(0, 10, shape)).astype(np.float32)


def test_blind_spot_mask_hides_the_requested_fraction_with_neighbour_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 32, 32)).astype(np.float32)
    masked, mask = blind_spot_mask(x, 0.05, rng)
    assert mask.shape == (3, 32, 32)
    assert 0 < mask.sum(axis=(1, 2)).min() <= round(0.05 * 32 * 32)
    assert np.array_equal(masked[:, 0][~mask], x[:, 0][~mask])  # only the hidden pixels change
    for b, y, xx in zip(*np.nonzero(mask)):  # each hidden pixel holds a value of a neighbour, in every channel
        window = x[
            b, :, max(y - NEIGHBOURHOOD, 0) : y + NEIGHBOURHOOD + 1, max(xx - NEIGHBOURHOOD, 0) : xx + NEIGHBOURHOOD + 1
        ].reshape(2, -1)
        assert any(np.array_equal(masked[b, :, y, xx], window[:, k]) for k in range(window.shape[1]))


def test_blind_spot_mask_never_copies_a_pixel_onto_itself():
    x = np.arange(16 * 16, dtype=np.float32).reshape(1, 1, 16, 16)  # every value distinct
    masked, mask = blind_spot_mask(x, 0.3, np.random.default_rng(0))
    assert (masked[0, 0][mask[0]] != x[0, 0][mask[0]]).all()


def test_pretraining_lowers_the_reconstruction_error():
    image = _image()
    config = PretrainConfig(
        model=SMALL, steps=60, time_limit=None, batch_size=8, patch_size=32, mask_fraction=0.05, learning_rate=3e-3
    )
    events = list(Pretrainer([image], config).run())
    assert [e.step for e in events] == list(range(1, 61))
    assert events[-1].progress == 1.0
    first, last = np.mean([e.loss for e in events[:10]]), np.mean([e.loss for e in events[-10:]])
    assert last < 0.7 * first


def test_pretrainer_stops_and_continues_from_a_body():
    image = _image()
    config = PretrainConfig(model=SMALL, steps=3, time_limit=None, batch_size=2, patch_size=32)
    trainer = Pretrainer([image], config)
    list(trainer.run())
    body = trainer.body()
    assert body.steps == 3 and "head_weight" not in body.state and body.describe().startswith("3 steps")
    again = Pretrainer([image], config, start=body)
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in body.state.items())
    stopped = []
    for event in again.run():
        stopped.append(event)
        again.stop()
    assert len(stopped) == 1 and again.body().steps == 4  # counts on from the body's steps


def test_a_body_round_trips_through_a_file_and_initialises_a_segmentation_network(tmp_path):
    trainer = Pretrainer([_image()], PretrainConfig(model=SMALL, steps=2, time_limit=None, batch_size=2, patch_size=32))
    list(trainer.run())
    path = save_pretrained(tmp_path / "body.pt", trainer.body())
    body = load_pretrained(path)
    assert body.arch == "msd" and body.steps == 2 and body.normalization["method"] == "percentile"
    net = build_model("msd", {**body.model_config, "out_channels": 3})
    head = net.head_weight.detach().clone()
    assert apply_pretrained(net, body) == len(body.state)
    assert torch.equal(net.weights[0], body.state["weights.0"]) and torch.equal(net.head_weight, head)


def test_bodies_that_do_not_fit_are_refused(tmp_path):
    trainer = Pretrainer([_image()], PretrainConfig(model=SMALL, steps=1, time_limit=None, batch_size=1, patch_size=32))
    list(trainer.run())
    body = trainer.body()
    with pytest.raises(PretrainError, match="pretrain again"):
        check_compatible(body, "msd", {**body.model_config, "depth": 7}, InputSpec())
    with pytest.raises(PretrainError, match="pretrain again"):
        check_compatible(body, "unet", body.model_config, InputSpec())
    with pytest.raises(PretrainError, match="2.5d"):
        check_compatible(body, "msd", body.model_config, InputSpec("2.5d", 3))
    with pytest.raises(PretrainError, match="pretrain again"):
        apply_pretrained(build_model("msd", {**body.model_config, "depth": 7, "out_channels": 2}), body)
    check_compatible(body, "msd", {**body.model_config, "out_channels": 5}, InputSpec())  # outputs do not matter


def test_load_refuses_other_files_with_one_line(tmp_path):
    with pytest.raises(PretrainError, match="not found; make them with 'napari-msd pretrain"):
        load_pretrained(tmp_path / "missing.pt")
    other = tmp_path / "model.pt"
    torch.save({"state": {}}, other)
    with pytest.raises(PretrainError, match="not a napari-msd pretrained-weights file"):
        load_pretrained(other)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(PretrainError) as err:
        load_pretrained(tmp_path / "text.pt")
    assert "\n" not in str(err.value)


def test_pretraining_2_5d_and_3d_inputs():
    image = _image((5, 40, 40))
    for spec in (InputSpec("2.5d", 3), InputSpec("3d")):
        config = PretrainConfig(model={"depth": 3}, input=spec, steps=2, time_limit=None, batch_size=2, patch_size=16)
        trainer = Pretrainer([image], config)
        assert len(list(trainer.run())) == 2
        assert trainer.body().input["mode"] == spec.mode


def test_config_refuses_nonsense():
    for bad in (
        dict(steps=None, time_limit=None),
        dict(steps=0),
        dict(mask_fraction=0.0),
        dict(mask_fraction=0.6),
        dict(batch_size=0),
    ):
        with pytest.raises(PretrainError):
            PretrainConfig(**bad).check()
    with pytest.raises(PretrainError, match="no image"):
        Pretrainer([], PretrainConfig(steps=1))


def test_cache_key_follows_the_image_content_and_the_network(monkeypatch, tmp_path):
    image = _image()
    key = cache_key(image, "msd", {"depth": 6, "width": 1}, InputSpec())
    assert key == cache_key(image.copy(), "msd", {"width": 1, "depth": 6, "out_channels": 4}, InputSpec())
    changed = image.copy()
    changed[1, 5, 5] += 1
    assert image_fingerprint(changed) != image_fingerprint(image)
    assert key != cache_key(image, "msd", {"depth": 7, "width": 1}, InputSpec())
    assert key != cache_key(image, "msd", {"depth": 6, "width": 1}, InputSpec("2.5d", 3))
    monkeypatch.setenv("NAPARI_MSD_CACHE", str(tmp_path))
    assert cache_path(key) == tmp_path / "pretrained" / f"{key}.pt"


def test_save_is_atomic_and_replaces(tmp_path):
    body = PretrainedBody(
        "msd",
        {"depth": 1},
        InputSpec().to_dict(),
        {"method": "percentile", "low": 0.0, "high": 1.0},
        {"bias": torch.zeros(1)},
        1,
        0.5,
    )
    path = save_pretrained(tmp_path / "b.pt", body)
    save_pretrained(path, body)
    assert [p.name for p in tmp_path.iterdir()] == ["b.pt"]


def test_munet_mask_heads_are_heads_not_body():
    """A MUNet's coarse mask heads are outputs, like the head of every network: a body leaves them out, and a body
    of the same MUNet initialises everything else."""
    config = {"in_channels": 1, "out_channels": 2, "depth": 2, "base_channels": 4}
    source, target = build_model("munet", config), build_model("munet", config)
    state = {k: v.clone() for k, v in source.state_dict().items() if not is_head(k)}
    assert any(k.startswith("coarse_heads.") for k in source.state_dict()) and not any(
        k.startswith("coarse_heads.") for k in state
    )
    body = PretrainedBody("munet", {}, InputSpec().to_dict(), {}, state, 1, 0.0)
    assert apply_pretrained(target, body) == len(state)
    key = next(k for k in state if k.endswith("weight"))
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])
