"""Model versions of a session: numbering, the current one, private copies, saving and loading model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_msd.io import load_model
from napari_msd.io.model_file import ModelMetadata, save_model
from napari_msd.models import MSDNet
from napari_msd.training.sampling import TrainingData
from napari_msd.training.versions import ModelVersion, ModelVersions


def _model(seed=0) -> MSDNet:
    """A tiny MS-D network whose head and biases are random too, so every tensor tells models apart."""
    torch.manual_seed(seed)
    net = MSDNet(1, 2, depth=3)
    with torch.no_grad():
        for p in (net.bias, net.head_weight, net.head_bias):
            p.normal_(0.0, 0.5)
    return net


def _metadata(model, **extra) -> ModelMetadata:
    return ModelMetadata(
        arch="msd", config=model.config(), class_names=["a", "b"], receptive_field=int(model.receptive_field), **extra
    )


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model, state):
    got = model.state_dict()
    assert got.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(got[key], value), key


# -- listing and selecting -----------------------------------------------------------------------------


def test_versions_are_numbered_in_order_and_the_newest_is_current():
    versions = ModelVersions()
    assert len(versions) == 0 and versions.current is None and versions.names() == [] and list(versions) == []
    added = [versions.add(_model(i), _metadata(_model(i))) for i in range(3)]
    assert versions.names() == ["v1", "v2", "v3"] and [v.name for v in added] == ["v1", "v2", "v3"]
    assert len(versions) == 3
    assert versions.current is added[-1]
    assert list(versions) == added
    assert all(isinstance(v, ModelVersion) for v in versions)
    assert versions.get("v2") is added[1]


def test_select_changes_the_current_version_and_add_makes_the_new_one_current():
    versions = ModelVersions()
    v1 = versions.add(_model(0), _metadata(_model(0)))
    v2 = versions.add(_model(1), _metadata(_model(1)), parent="v1")
    assert versions.select("v1") is v1 and versions.current is v1
    assert versions.names() == ["v1", "v2"]  # selecting neither adds nor reorders
    assert versions.select("v2") is v2 and versions.current is v2
    versions.select("v1")
    v3 = versions.add(_model(2), _metadata(_model(2)))
    assert versions.current is v3 and v3.name == "v3"


def test_unknown_names_raise_a_key_error_listing_the_versions():
    versions = ModelVersions()
    with pytest.raises(KeyError) as err:
        versions.get("v1")
    assert "v1" in err.value.args[0] and "none yet" in err.value.args[0]
    versions.add(_model(0), _metadata(_model(0)))
    versions.add(_model(1), _metadata(_model(1)))
    with pytest.raises(KeyError) as err:
        versions.select("v7")
    message = err.value.args[0]
    assert "'v7'" in message and "v1, v2" in message
    assert versions.current.name == "v2"  # a failed select keeps the current version


def test_iterating_is_safe_while_adding():
    versions = ModelVersions()
    versions.add(_model(0), _metadata(_model(0)))
    for _ in versions:
        versions.add(_model(1), _metadata(_model(1)))
    assert versions.names() == ["v1", "v2"]


# -- private copies ------------------------------------------------------------------------------------


def test_add_keeps_a_private_cpu_copy_in_eval_mode():
    model = _model(0).train()
    before = _state(model)
    version = ModelVersions().add(model, _metadata(model))
    assert version.model is not model
    assert not version.model.training and not any(m.training for m in version.model.modules())
    assert model.training  # the caller's model keeps its mode
    assert all(p.device.type == "cpu" for p in version.model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    _assert_same_weights(version.model, before)
    assert not torch.equal(model.head_bias, version.model.head_bias)
    own = {p.data_ptr() for p in version.model.parameters()}
    assert own.isdisjoint(p.data_ptr() for p in model.parameters())


def test_add_copies_metadata_metrics_and_labels_list():
    model = _model(0)
    meta, metrics = _metadata(model), {"mean_iou": 0.5}
    data = [TrainingData(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), name="labels")]
    version = ModelVersions().add(model, meta, metrics=metrics, parent="v0", trained_on=data, steps=12)
    meta.class_names[0] = "changed"
    metrics["mean_iou"] = 0.0
    data.append(data[0])
    assert version.metadata.class_names == ["a", "b"]
    assert version.metrics == {"mean_iou": 0.5}
    assert len(version.trained_on) == 1 and version.trained_on[0].name == "labels"
    assert (version.parent, version.steps, version.path) == ("v0", 12, None)


def test_add_without_optional_arguments_gives_empty_defaults():
    version = ModelVersions().add(_model(0), _metadata(_model(0)))
    assert version.metrics == {} and version.trained_on == [] and version.parent is None and version.steps == 0


# -- files ---------------------------------------------------------------------------------------------


def test_save_writes_a_loadable_model_file_and_records_its_path(tmp_path):
    versions = ModelVersions()
    model = _model(3)
    meta = _metadata(
        model,
        provenance={"metrics": {"mean_iou": 0.7}, "steps": 5},
        normalization={"method": "fixed", "low": 1.0, "high": 9.0},
    )
    versions.add(_model(0), _metadata(_model(0)))
    v2 = versions.add(model, meta)
    versions.select("v1")
    written = versions.save("v2", tmp_path / "sub" / "v2.msd")
    assert written == tmp_path / "sub" / "v2.msd" and isinstance(written, Path) and written.is_file()
    assert v2.path == written and versions.get("v1").path is None
    loaded, loaded_meta = load_model(written)
    _assert_same_weights(loaded, _state(model))
    assert (loaded_meta.arch, loaded_meta.config, loaded_meta.class_names, loaded_meta.receptive_field) == (
        meta.arch,
        meta.config,
        meta.class_names,
        meta.receptive_field,
    )
    assert loaded_meta.class_colors == meta.class_colors
    assert loaded_meta.normalization == meta.normalization
    assert loaded_meta.provenance["metrics"] == {"mean_iou": 0.7} and loaded_meta.provenance["steps"] == 5
    assert versions.current.name == "v1"  # saving does not select


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    versions = ModelVersions()
    v1 = versions.add(_model(0), _metadata(_model(0)))
    versions.add(_model(1), _metadata(_model(1)))
    target = tmp_path / "model.msd"
    versions.save("v1", target)
    original = target.read_bytes()
    with pytest.raises(FileExistsError):
        versions.save("v2", target)
    assert target.read_bytes() == original
    assert versions.get("v2").path is None and v1.path == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.msd"]  # no temporary file left behind
    versions.save("v2", target, overwrite=True)
    assert target.read_bytes() != original
    _assert_same_weights(load_model(target)[0], _state(versions.get("v2").model))
    assert versions.get("v2").path == target


def test_save_of_an_unknown_version_raises_key_error_and_writes_nothing(tmp_path):
    versions = ModelVersions()
    versions.add(_model(0), _metadata(_model(0)))
    with pytest.raises(KeyError, match="v1"):
        versions.save("v9", tmp_path / "x.msd")
    assert not (tmp_path / "x.msd").exists()


def test_load_adds_a_current_version_with_path_and_metrics_from_provenance(tmp_path):
    model = _model(4)
    metrics = {"global_accuracy": 0.9, "mean_iou": 0.6}
    path = save_model(tmp_path / "m.msd", model, _metadata(model, provenance={"metrics": metrics}))
    versions = ModelVersions()
    versions.add(_model(0), _metadata(_model(0)))
    version = versions.load(str(path))
    assert version.name == "v2" and versions.current is version
    assert version.path == path and isinstance(version.path, Path)
    assert version.metrics == metrics
    assert version.trained_on == [] and version.parent is None
    assert version.metadata.class_names == ["a", "b"]
    assert not version.model.training
    _assert_same_weights(version.model, _state(model))


@pytest.mark.parametrize("provenance", [{}, {"metrics": "bad"}, {"metrics": None}])
def test_load_without_usable_metrics_gives_empty_metrics(tmp_path, provenance):
    model = _model(5)
    path = save_model(tmp_path / "m.msd", model, _metadata(model, provenance=provenance))
    version = ModelVersions().load(path)
    assert version.metrics == {}
    assert "not validated" in version.describe()


def test_save_then_load_round_trip(tmp_path):
    versions = ModelVersions()
    versions.add(
        _model(6), _metadata(_model(6), provenance={"metrics": {"mean_iou": 0.25}}), metrics={"mean_iou": 0.25}
    )
    versions.save("v1", tmp_path / "v1.msd")
    again = versions.load(tmp_path / "v1.msd")
    assert again.name == "v2" and again.metrics == {"mean_iou": 0.25}
    _assert_same_weights(again.model, _state(versions.get("v1").model))


# -- describe ------------------------------------------------------------------------------------------


def test_describe_mentions_name_metrics_parent_steps_and_file(tmp_path):
    versions = ModelVersions()
    versions.add(_model(0), _metadata(_model(0)))
    version = versions.add(
        _model(1),
        _metadata(_model(1)),
        parent="v1",
        steps=200,
        metrics={"global_accuracy": 0.94123, "mean_iou": 0.7119, "class_accuracy": 0.5},
    )
    text = version.describe()
    assert "\n" not in text and text.startswith("v2")
    assert "accuracy 0.941" in text and "0.712" in text and "mean iou" in text.lower()
    assert "class accuracy 0.500" in text
    assert "v1" in text and "fine-tuned from v1" in text
    assert "200 steps" in text
    assert "not validated" not in text
    versions.save("v2", tmp_path / "second.msd")
    assert "second.msd" in version.describe()


def test_describe_of_an_unvalidated_version():
    versions = ModelVersions()
    text = versions.add(_model(0), _metadata(_model(0)), metrics={"loss": 0.3}).describe()
    assert text.startswith("v1") and "not validated" in text
    assert "fine-tuned" not in text and "steps" not in text
