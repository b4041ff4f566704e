"""Model files: bit-identical round trips, atomic writes, and a clear refusal of every bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from napari_msd import __version__
from napari_msd.io import (
    FORMAT_VERSION,
    ModelFileError,
    ModelMetadata,
    load_model,
    model_file,
    read_metadata,
    save_model,
)
from napari_msd.models.msd import MSDNet

NORM = {"method": "percentile", "low": 3.5, "high": 211.0, "percentiles": [1, 99]}


def _msd(ndim: int = 2) -> MSDNet:
    torch.manual_seed(0)
    net = MSDNet(1, 3, depth=5, ndim=ndim)
    with torch.no_grad():
        for p in (net.bias, net.head_weight, net.head_bias):
            p.normal_(0.0, 0.5)
    return net.eval()


def _save(path: Path, net: torch.nn.Module | None = None, **kwargs) -> Path:
    kwargs.setdefault("class_names", ["background", "membrane", "mitochondria"])
    return save_model(path, net or _msd(), **kwargs)


def _rewrite(path: Path, edit) -> None:
    """Re-write ``path`` with ``edit(metadata_dict)`` applied and a valid checksum, as a newer or buggy writer would."""
    with safe_open(path, framework="pt") as f:
        data = json.loads(f.metadata()[model_file.METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(data)
    meta_json = json.dumps(data)
    header = {model_file.METADATA_KEY: meta_json, model_file.DIGEST_KEY: model_file._digest(tensors, meta_json)}
    safetensors.torch.save_file(tensors, path, metadata=header)


def _assert_fails(path: Path, *phrases: str, read=load_model) -> None:
    with pytest.raises(ModelFileError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for phrase in phrases:
        assert phrase in message


@pytest.mark.parametrize("ndim", [2, 3])
def test_msd_round_trip_is_bit_identical(tmp_path, ndim):
    net = _msd(ndim)
    provenance = {"data_shape": [64, 64], "steps": 120, "metrics": {"loss": 0.25}}
    path = _save(tmp_path / "model.msd", net, normalization=NORM, provenance=provenance, effective_halo=7)
    loaded, meta = load_model(path)
    x = torch.rand(2, 1, *(9,) * ndim)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert not loaded.training and isinstance(loaded, MSDNet)
    assert meta.arch == "msd" and meta.config == net.config()
    assert meta.class_names == ["background", "membrane", "mitochondria"]
    assert meta.class_colors == list(model_file.PALETTE[:3])
    assert meta.normalization == NORM and meta.receptive_field == net.receptive_field and meta.effective_halo == 7
    assert meta.format_version == FORMAT_VERSION
    assert meta.provenance["steps"] == 120 and meta.provenance["metrics"] == {"loss": 0.25}
    assert meta.provenance["napari_msd_version"] == __version__
    assert meta.provenance["torch_version"] == torch.__version__ and meta.provenance["created"].endswith("+00:00")
    assert read_metadata(path) == meta
    assert ModelMetadata.from_dict(meta.to_dict()) == meta


def test_unet_round_trip_is_bit_identical(tmp_path):
    from napari_msd.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(1, 2, depth=2, base_channels=4)
    net(torch.rand(2, 1, 16, 16))  # non-trivial BatchNorm running statistics
    net.eval()
    loaded, meta = load_model(save_model(tmp_path / "unet.msd", net, class_names=["a", "b"]))
    x = torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert meta.arch == "unet" and meta.config == net.config() and meta.receptive_field == net.receptive_field


def test_resave_from_metadata_keeps_it(tmp_path):
    first = _save(tmp_path / "a.msd", normalization=NORM, class_colors=["#FF0000", "#00ff00", "#0000ff"])
    net, meta = load_model(first)
    assert meta.class_colors[0] == "#ff0000"
    second = save_model(tmp_path / "b.msd", net, meta, effective_halo=4)
    again = read_metadata(second)
    assert again.class_names == meta.class_names and again.class_colors == meta.class_colors
    assert again.normalization == NORM and again.effective_halo == 4
    assert again.provenance["created"] == meta.provenance["created"]


def test_defaults_and_any_extension(tmp_path):
    path = save_model(tmp_path / "sub" / "model.weights", _msd())
    meta = read_metadata(path)
    assert meta.class_names == ["class 1", "class 2", "class 3"] and meta.normalization == {}
    assert meta.effective_halo is None and len(meta.class_colors) == 3


def test_refuses_to_overwrite(tmp_path):
    path = _save(tmp_path / "model.msd")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True") as info:
        _save(path, _msd(3))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before
    _save(path, _msd(3), overwrite=True)
    assert read_metadata(path).config["ndim"] == 3


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_leaves_old_file_intact_and_no_temp_file(tmp_path, monkeypatch, failing):
    path = _save(tmp_path / "model.msd")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="simulated crash"):
        _save(path, _msd(3), overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.msd"]
    read_metadata(path)


def test_class_name_count_must_match_outputs(tmp_path):
    with pytest.raises(ValueError, match="2 class names given but the model predicts 3 classes"):
        save_model(tmp_path / "model.msd", _msd(), class_names=["a", "b"])
    with pytest.raises(ValueError, match="class colours"):
        save_model(tmp_path / "model.msd", _msd(), class_names=["a", "b", "c"], class_colors=["red", "green", "blue"])
    assert not list(tmp_path.iterdir())


def test_read_metadata_does_not_build_the_network(tmp_path, monkeypatch):
    path = _save(tmp_path / "model.msd", normalization=NORM)
    monkeypatch.setattr(model_file, "build_model", lambda *a: pytest.fail("read_metadata built a network"))
    assert read_metadata(path).normalization == NORM


def test_truncated(tmp_path):
    path = _save(tmp_path / "model.msd")
    data = path.read_bytes()
    for size in (len(data) - 7, len(data) // 2, 20, 3, 0):
        path.write_bytes(data[:size])
        _assert_fails(path, "not a valid napari-msd model file")
        _assert_fails(path, "not a valid napari-msd model file", read=read_metadata)


def test_flipped_weight_byte(tmp_path):
    path = _save(tmp_path / "model.msd")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(data))
    _assert_fails(path, "is corrupted or was modified (checksum mismatch); re-save or re-export the model")
    _assert_fails(path, "checksum mismatch", read=read_metadata)


def test_edited_metadata(tmp_path):
    path = _save(tmp_path / "model.msd")
    data = path.read_bytes()
    assert data.count(b"membrane") == 1
    path.write_bytes(data.replace(b"membrane", b"nucleus_"))  # same length: still a valid safetensors file
    _assert_fails(path, "is corrupted or was modified (checksum mismatch)")
    _assert_fails(path, "checksum mismatch", read=read_metadata)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.ones(3)}, path, metadata={"format": "pt"})
    _assert_fails(path, "not a napari-msd model file")
    safetensors.torch.save_file({"w": torch.ones(3)}, path)
    _assert_fails(path, "not a napari-msd model file", read=read_metadata)


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.msd", b"just some text\n"), ("image.msd", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)],
)
def test_not_a_safetensors_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    _assert_fails(path, "not a valid napari-msd model file", "choose a model file saved by napari-msd")


def test_torch_pickle_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_msd().state_dict(), path)
    _assert_fails(path, "PyTorch pickle checkpoint")


def test_newer_format_version(tmp_path):
    path = _save(tmp_path / "model.msd")
    _rewrite(path, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    _assert_fails(path, f"newer napari-msd (format {FORMAT_VERSION + 1} > {FORMAT_VERSION}); upgrade napari-msd")
    _assert_fails(path, "upgrade napari-msd", read=read_metadata)


def test_missing_file_and_directory(tmp_path):
    _assert_fails(tmp_path / "nope.msd", "does not exist")
    _assert_fails(tmp_path / "nope.msd", "does not exist", read=read_metadata)
    _assert_fails(tmp_path, "not a file")


def test_unknown_architecture(tmp_path):
    path = _save(tmp_path / "model.msd")
    _rewrite(path, lambda d: d.update(arch="transformer"))
    assert read_metadata(path).arch == "transformer"
    _assert_fails(path, "unknown architecture 'transformer'")


def test_config_weights_mismatch(tmp_path):
    path = _save(tmp_path / "model.msd")
    _rewrite(path, lambda d: d["config"].update(depth=6))
    _assert_fails(path, "do not match its msd configuration", "missing tensor")
    _rewrite(path, lambda d: d["config"].update(depth=5, in_channels=2))
    _assert_fails(path, "do not match its msd configuration", "has shape")


def test_invalid_metadata_values(tmp_path):
    path = _save(tmp_path / "model.msd")
    _rewrite(path, lambda d: d.update(class_colors=["#ff0000"]))
    _assert_fails(path, "has invalid metadata", read=read_metadata)
    _rewrite(path, lambda d: d.pop("arch"))
    _assert_fails(path, "lacks arch", read=read_metadata)
