"""An ensemble in the docks: the Model dock's preset, the Train dock training its members one after another (status,
skip, stop, retrain), the Predict dock's uncertainty from the members' disagreement and "Next uncertain region"."""

from __future__ import annotations

import numpy as np
import torch

from napari_msd._widgets.session import get_session
from napari_msd.io.model_file import ModelMetadata
from napari_msd.models import MSDNet, ensemble_config

from helpers.docks import WAIT_MS, wait_idle


def _ensemble_session(viewer, members: int = 2) -> None:
    session = get_session(viewer)
    session.arch = "ensemble"
    session.model_config = ensemble_config("msd", {"depth": 6, "width": 1}, members)


def _record_status(dock) -> list[str]:
    texts: list[str] = []
    set_text = dock.status.setText
    dock.status.setText = lambda text: (texts.append(text), set_text(text))
    return texts


def test_the_model_dock_offers_an_ensemble_with_its_size(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    _, model = viewer.window.add_plugin_dock_widget("napari-msd", "Model")
    model.preset.setCurrentText("Ensemble of 3 MS-D (disagreement)")
    session = get_session(viewer)
    assert session.arch == "ensemble" and len(session.model_config["members"]) == 3
    assert model.params_label.text() == f"{3 * 45_754:,}"
    assert model.rf_label.text().startswith("550 px")


def test_an_ensemble_trains_member_by_member_and_its_disagreement_guides_the_review(docks, qtbot, errors):
    viewer, train, predict = docks
    _ensemble_session(viewer)
    session = get_session(viewer)
    train.learning_rate.setValue(1e-2)  # 40 steps that learn something: members that can disagree
    texts = _record_status(train)
    assert train.start()
    assert not train.skip_button.isHidden() and train.progress_bar.maximum() == 100
    wait_idle(qtbot, train)
    assert errors == []
    version = session.versions.current
    assert version.metadata.arch == "ensemble" and version.model.n_members == 2 and version.steps == 80
    assert any(t.startswith("member 1/2 · step") for t in texts)
    assert any(t.startswith("member 2/2 · step") for t in texts)
    assert len(train.plot.series()["steps"]) == 80  # the plot's steps run on across members
    assert train.skip_button.isHidden()

    assert predict.measure.currentText() == "disagreement"  # an ensemble's uncertainty, chosen for it
    assert predict.predict()
    wait_idle(qtbot, predict)
    unc = viewer.layers[f"uncertainty ({version.name})"]
    assert unc.metadata["measure"] == "disagreement" and np.asarray(unc.data).max() > 0
    assert predict.next_uncertain_region() is not None

    viewer.layers["strokes"].data[3, 40:44, 5:30] = 1  # a correction: Retrain fine-tunes every member
    texts.clear()
    assert train.retrain()
    wait_idle(qtbot, train)
    assert errors == []
    assert any(t.startswith("member 1/2 · Fine-tuning") for t in texts)
    assert any(t.startswith("member 2/2 · Fine-tuning") for t in texts)
    if session.versions.current is not version:  # a new version unless no member beat its parent
        assert session.versions.current.model.n_members == 2 and session.versions.current.parent == version.name

    torch.manual_seed(0)
    single = MSDNet(1, 2, depth=4).eval()
    meta = ModelMetadata("msd", single.config(), ["dark", "bright"], int(single.receptive_field))
    session.versions.add(single, meta)
    session.versions_changed.emit()
    assert predict.measure.findText("disagreement") < 0  # one network has no members to disagree


def test_skip_leaves_a_member_out_and_stop_ends_the_ensemble(docks, qtbot, errors):
    viewer, train, _ = docks
    _ensemble_session(viewer)
    train.length.setValue(100_000)
    assert train.start()
    qtbot.waitUntil(lambda: train._member == (0, 2) and len(train.plot.series()["steps"]) > 0, timeout=WAIT_MS)
    train.skip_member()
    qtbot.waitUntil(lambda: train._member == (1, 2) and len(train.plot.series()["steps"]) > 3, timeout=WAIT_MS)
    train.stop()
    wait_idle(qtbot, train)
    assert errors == []
    version = get_session(viewer).versions.current
    assert version is not None and version.model.n_members == 1  # the second member, stopped; the first skipped
    assert version.metadata.provenance["ensemble"]["left_out"] == {"1": "skipped"}


def test_an_ensemble_trains_in_the_training_process_too(docks, qtbot, errors):
    viewer, train, _ = docks
    _ensemble_session(viewer)
    train.learning_rate.setValue(1e-2)
    train.process_check.setChecked(True)  # the dock's default: the child process (training.remote)
    texts = _record_status(train)
    assert train.start()
    wait_idle(qtbot, train)
    assert errors == []
    version = get_session(viewer).versions.current
    assert version is not None and version.metadata.arch == "ensemble" and version.model.n_members == 2
    assert any(t.startswith("member 2/2 · step") for t in texts)
