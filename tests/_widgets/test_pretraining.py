"""Learning the image while a person paints: the Train dock's background pretraining starts when an image is
chosen, pauses while a training runs, gives the new network its body, caches it, and stops when switched off."""

from __future__ import annotations

from napari_msd._widgets.session import get_session
from napari_msd.training.pretrain import cache_path, load_pretrained

from helpers.docks import WAIT_MS, wait_idle


def _learning(train, qtbot, steps: int = 2) -> None:
    train.pretrain_check.setChecked(True)
    qtbot.waitUntil(
        lambda: train.pretraining.pretrainer is not None and train.pretraining.pretrainer.step >= steps, timeout=WAIT_MS
    )


def test_the_image_is_learned_while_painting_and_a_new_training_starts_from_it(docks, qtbot, errors):
    viewer, train, _ = docks
    _learning(train, qtbot)
    assert train.pretraining.state == "running" or train.pretraining.pretrainer.step >= 2
    qtbot.waitUntil(lambda: "Learning 'em'" in train.pretrain_status.text(), timeout=WAIT_MS)
    pretrainer = train.pretraining.pretrainer
    assert train.start()
    assert pretrainer.paused  # two thread teams would share the cores: it waits while the training runs
    wait_idle(qtbot, train)
    assert errors == []
    version = get_session(viewer).versions.current
    provenance = version.metadata.provenance["pretrained"]
    assert provenance["steps"] >= 2
    assert not pretrainer.paused  # the training has ended: learning goes on
    key = train.pretraining.key
    assert load_pretrained(cache_path(key)).steps >= provenance["steps"]  # cached on disk for later sessions


def test_retraining_does_not_use_the_pretrained_body_but_the_parent(docks, qtbot, errors):
    viewer, train, _ = docks
    _learning(train, qtbot)
    assert train.start()
    wait_idle(qtbot, train)
    strokes = viewer.layers["strokes"]
    data = strokes.data.copy()
    data[0, 0:4, 0:4] = 1
    strokes.data = data
    assert train.retrain()
    wait_idle(qtbot, train)
    assert errors == []
    assert train._job.pretrained is False


def test_switching_it_off_stops_it_and_training_starts_from_scratch(docks, qtbot, errors):
    viewer, train, _ = docks
    _learning(train, qtbot)
    train.pretrain_check.setChecked(False)
    assert not train.pretraining.running and train.pretrain_status.text() == ""
    assert train.start()
    wait_idle(qtbot, train)
    assert errors == []
    assert "pretrained" not in get_session(viewer).versions.current.metadata.provenance


def test_a_spent_budget_is_remembered_per_image(docks, qtbot):
    viewer, train, _ = docks
    train.pretraining.budget = 1.0  # seconds
    train.pretrain_check.setChecked(True)
    qtbot.waitUntil(lambda: train.pretraining.state == "done", timeout=WAIT_MS)
    assert "Learned 'em'" in train.pretrain_status.text()
    steps = load_pretrained(cache_path(train.pretraining.key)).steps
    train.pretraining.stop()
    train.pretraining.start(viewer.layers["em"].data, "em")  # again: read from the cache, nothing more to do
    qtbot.waitUntil(lambda: train.pretraining.state == "done", timeout=WAIT_MS)
    assert load_pretrained(cache_path(train.pretraining.key)).steps == steps
