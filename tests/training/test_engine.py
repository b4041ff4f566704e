"""The training engine as the GUI and the CLI drive it: events, control from other threads, files, fine-tuning."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time

import numpy as np
import pytest
import torch

from napari_msd.base.inputs import InputSpec
from napari_msd.inference import halo as halo_module
from napari_msd.io.model_file import load_model, read_metadata, save_model
from napari_msd.models import MSDNet
from napari_msd.training import engine as engine_module
from napari_msd.training.engine import Trainer
from napari_msd.training.events import Paused, Saved, TrainingFinished, TrainingStarted, TrainStep, Validated
from napari_msd.training.sampling import TrainingData, TrainingDataError

from helpers.training import MSD
from helpers.training import tiny_config as _config

UNET = {"arch": "unet", "model": {"depth": 2, "base_channels": 4}, "learning_rate": 3e-3}


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


def _run_in_thread(trainer: Trainer):
    """Drive ``trainer.run()`` on a worker thread, as napari's thread_worker does."""
    events: list = []
    errors: list = []

    def work():
        try:
            for event in trainer.run():
                events.append(event)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            errors.append(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, events, errors


def _patch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "napari-msd-patches" and t.is_alive()]


def _wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the trainer"
        time.sleep(0.005)


# -- learning and the event stream ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [MSD, UNET], ids=["msd", "unet"])
def test_tiny_networks_learn_and_events_come_in_order(arch, task, data, predict):
    image, labels, truth = task
    trainer = Trainer(data, _config(**arch))
    events = list(trainer.run())

    started, finished = events[0], events[-1]
    assert isinstance(started, TrainingStarted) and isinstance(finished, TrainingFinished)
    assert len(_of(events, TrainingStarted)) == 1 and len(_of(events, TrainingFinished)) == 1
    assert started.patch_size == (48, 48) and started.class_names == ["class 1", "class 2"]
    assert started.n_parameters == sum(p.numel() for p in trainer.model.parameters())
    assert started.val_pixels and set(started.train_pixels) == {"class 1", "class 2"}
    assert sum(started.train_pixels.values()) + sum(started.val_pixels.values()) <= int((labels > 0).sum())
    assert started.fine_tuning is False and "CPU" in started.device

    steps = _of(events, TrainStep)
    assert [s.step for s in steps] == list(range(1, 31))
    assert all(math.isfinite(s.loss) and s.samples_per_s > 0 for s in steps)
    assert all(b.elapsed >= a.elapsed for a, b in zip(steps, steps[1:]))
    assert [s.progress for s in steps][-1] == pytest.approx(1.0)
    assert all(b.progress > a.progress for a, b in zip(steps, steps[1:]))
    assert np.mean([s.loss for s in steps[-5:]]) < np.mean([s.loss for s in steps[:5]])

    validated = _of(events, Validated)
    assert [v.step for v in validated] == [10, 20, 30]
    for v in validated:  # each validation directly follows its step
        assert isinstance(events[events.index(v) - 1], TrainStep) and events[events.index(v) - 1].step == v.step

    assert finished.reason == "steps" and finished.steps == 30 and finished.path is None
    assert finished.best_metrics["global_accuracy"] >= 0.9
    assert finished.best_step in (10, 20, 30)
    # the whole image, not just the painted strokes, is classified far better than chance (0.5)
    pred = predict(trainer.snapshot(), trainer.normalization, image)
    assert (pred == truth).mean() >= 0.75
    assert all((pred[truth == c] == c).mean() >= 0.6 for c in (1, 2))


def test_reproducible_with_the_same_seed(data):
    def losses(seed):
        trainer = Trainer(data, _config(steps=6, seed=seed))
        return [e.loss for e in trainer.run() if isinstance(e, TrainStep)]

    first = losses(0)
    assert losses(0) == first
    assert losses(1) != first


def test_single_short_stroke_per_class_trains_without_validation(tmp_path, task, accept_any_network):
    image = task[0]
    labels = np.zeros(image.shape, np.uint8)
    labels[12, 4:14] = 1
    labels[12, 28:40] = 2
    out = tmp_path / "m.msd"
    events = list(Trainer([TrainingData(image, labels)], _config(steps=5), output=out).run())
    assert events[0].val_pixels == {} and events[0].train_pixels == {"class 1": 10, "class 2": 12}
    assert not _of(events, Validated) and len(_of(events, TrainStep)) == 5
    assert events[-1].reason == "steps" and events[-1].best_step == 5
    assert set(events[-1].best_metrics) == {"health"}  # judged on unlabeled windows: nothing held out
    load_model(out)


def test_volumes_train_in_2_5d_and_3d(make_task, tmp_path, accept_any_network):
    image, labels, _ = make_task(shape=(12, 64, 64), square=16, stroke=8)
    spec = InputSpec(mode="2.5d", slices=3, orientations=("xy", "xz"))
    out = tmp_path / "25d.msd"
    events = list(
        Trainer(
            [TrainingData(image, labels)], _config(model={"depth": 5}, input=spec, patch_size=32, steps=4), output=out
        ).run()
    )
    assert events[0].patch_size == (12, 32)  # shrunk to the 12 slices that xz planes have
    assert events[-1].steps == 4
    model, meta = load_model(out)
    assert model.in_channels == 3 and InputSpec.from_dict(meta.input) == spec

    three = InputSpec(mode="3d")
    trainer = Trainer(
        [TrainingData(image, labels)], _config(model={"depth": 4}, input=three, patch_size=16, steps=3, batch_size=2)
    )
    events = list(trainer.run())
    assert events[0].patch_size == (12, 16, 16) and events[-1].steps == 3
    assert trainer.snapshot().ndim == 3


# -- stop, pause, resume, snapshot: from any thread -----------------------------------------------------------


def test_stop_from_the_loop_ends_after_that_step(tmp_path, data, accept_any_network):
    out = tmp_path / "model.msd"
    trainer = Trainer(data, _config(steps=500, validate_every=1000), output=out)
    events = []
    for event in trainer.run():
        events.append(event)
        if isinstance(event, TrainStep) and event.step == 5:
            trainer.stop()
    assert max(s.step for s in _of(events, TrainStep)) == 5
    finished = events[-1]
    assert finished.reason == "stopped" and finished.steps == 5 and finished.path == str(out)
    model, meta = load_model(out)
    assert meta.provenance["steps"] == 5
    assert _same_state(_state(model), _state(trainer.model))


def test_stop_from_another_thread_ends_within_one_step(tmp_path, data, accept_any_network):
    out = tmp_path / "model.msd"
    trainer = Trainer(data, _config(steps=500, validate_every=7), output=out)
    thread, events, errors = _run_in_thread(trainer)
    _wait_for(lambda: trainer.step >= 3)
    at_stop = trainer.step
    trainer.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors
    finished = events[-1]
    assert isinstance(finished, TrainingFinished) and finished.reason == "stopped"
    assert at_stop <= finished.steps <= at_stop + 1
    assert out.exists()
    model, meta = load_model(out)
    assert meta.provenance["steps"] == finished.steps
    assert _of(events, Saved)[-1].path == finished.path == str(out)


def test_stop_before_running_trains_nothing(tmp_path, data):
    out = tmp_path / "model.msd"
    trainer = Trainer(data, _config(), output=out)
    trainer.stop()
    events = list(trainer.run())
    assert not _of(events, TrainStep)
    assert events[-1].reason == "stopped" and events[-1].steps == 0


def test_pause_freezes_training_until_resumed(data):
    trainer = Trainer(data, _config(steps=500, validate_every=1000))
    thread, events, errors = _run_in_thread(trainer)
    try:
        _wait_for(lambda: trainer.step >= 2)
        trainer.pause()
        assert trainer.paused
        _wait_for(lambda: any(isinstance(e, Paused) and e.paused for e in events))
        frozen = trainer.step
        steps_seen = len(_of(events, TrainStep))
        time.sleep(0.3)
        assert trainer.step == frozen and len(_of(events, TrainStep)) == steps_seen
        trainer.resume()
        assert not trainer.paused
        _wait_for(lambda: trainer.step >= frozen + 3)
    finally:
        trainer.stop()
        thread.join(timeout=30)
    assert not errors and events[-1].reason == "stopped"
    kinds = [(type(e).__name__, getattr(e, "paused", None)) for e in events]
    paused_at = kinds.index(("Paused", True))
    resumed_at = kinds.index(("Paused", False))
    assert paused_at < resumed_at
    assert any(isinstance(e, TrainStep) for e in events[resumed_at:])
    before = [e for e in events[:paused_at] if isinstance(e, TrainStep)][-1]
    after = [e for e in events[resumed_at:] if isinstance(e, TrainStep)][0]
    assert after.step == before.step + 1
    assert after.elapsed - before.elapsed < 0.25  # the pause is not counted as training time


def test_stop_while_paused_ends_the_run(data):
    trainer = Trainer(data, _config(steps=500))
    thread, events, errors = _run_in_thread(trainer)
    _wait_for(lambda: trainer.step >= 1)
    trainer.pause()
    _wait_for(lambda: any(isinstance(e, Paused) for e in events))
    trainer.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors
    assert events[-1].reason == "stopped"


def test_snapshot_is_an_independent_eval_copy(data):
    trainer = Trainer(data, _config(steps=20, validate_every=1000))
    run = trainer.run()
    for event in run:
        if isinstance(event, TrainStep) and event.step == 3:
            break
    snap = trainer.snapshot()
    at_three = _state(trainer.model)
    assert not snap.training and trainer.model.training
    assert all(p.device.type == "cpu" for p in snap.parameters())
    assert _same_state(_state(snap), at_three)
    assert type(snap) is type(trainer.model) and snap.config() == trainer.model.config()

    with torch.no_grad():  # changing the copy leaves the trainer's network alone
        for p in snap.parameters():
            p.add_(1.0)
    assert _same_state(_state(trainer.model), at_three)

    snap = trainer.snapshot()
    for event in run:  # training goes on; the snapshot does not follow it
        if isinstance(event, TrainStep) and event.step == 6:
            break
    assert _same_state(_state(snap), at_three)
    assert not _same_state(_state(trainer.model), at_three)
    run.close()


def test_snapshot_from_another_thread_during_training(data, task):
    image = task[0]
    trainer = Trainer(data, _config(steps=40, validate_every=10))
    snapshots, errors = [], []
    done = threading.Event()

    def preview():  # what the live preview does while the worker trains
        try:
            while not done.is_set():
                snap = trainer.snapshot()
                with torch.no_grad():
                    out = snap(torch.from_numpy(trainer.normalization(image[:40, :40]))[None, None])
                snapshots.append(out.shape)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=preview, daemon=True)
    thread.start()
    try:
        events = list(trainer.run())
    finally:
        done.set()
        thread.join(timeout=30)
    assert not errors
    assert len(snapshots) >= 3 and all(s == (1, 2, 40, 40) for s in snapshots)
    assert events[-1].reason == "steps" and events[-1].steps == 40


def test_abandoning_the_run_stops_the_patch_thread(data):
    """napari's worker.quit() closes the generator at a yield: nothing may keep running."""
    trainer = Trainer(data, _config(steps=500))
    run = trainer.run()
    for event in run:
        if isinstance(event, TrainStep) and event.step == 2:
            break
    assert _patch_threads()
    run.close()
    _wait_for(lambda: not _patch_threads(), timeout=10)


class _BreakingImage:
    """An image whose reads start failing (a lost network drive, a damaged zarr chunk)."""

    def __init__(self, data):
        self._data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.broken = False

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._data, dtype=dtype)

    def __getitem__(self, key):
        if self.broken:
            raise OSError("chunk 3.1 is unreadable")
        return self._data[key]


def test_a_failing_read_in_the_patch_thread_surfaces_in_run(task):
    image, labels, _ = task
    broken = _BreakingImage(image)
    trainer = Trainer([TrainingData(broken, labels)], _config(steps=500))
    run = trainer.run()
    next(run)  # TrainingStarted
    broken.broken = True
    thread_result = []

    def consume():
        try:
            for _ in run:
                pass
            thread_result.append("finished")
        except OSError as err:
            thread_result.append(err)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the run hung after the patch thread failed"
    assert isinstance(thread_result[0], OSError) and "chunk 3.1" in str(thread_result[0])
    _wait_for(lambda: not _patch_threads(), timeout=10)


# -- model files ----------------------------------------------------------------------------------------------


def test_output_is_a_valid_model_after_every_save(tmp_path, data):
    out = tmp_path / "model.msd"
    trainer = Trainer(data, _config(steps=30, class_names=["dark", "bright"]), output=out)
    saves = 0
    for event in trainer.run():
        if isinstance(event, Saved):
            saves += 1
            assert event.path == str(out)
            model, meta = load_model(out)
            assert _same_state(_state(model), _state(trainer.model))
            assert meta.class_names == ["dark", "bright"]
            assert meta.provenance["steps"] == event.step
        if isinstance(event, TrainingFinished):
            assert event.path == str(out)
    assert saves >= 2  # when validation improved, and at the end
    model, meta = load_model(out)
    assert meta.arch == "msd" and meta.config["depth"] == 8
    assert meta.normalization == trainer.normalization.to_dict()
    assert meta.input == InputSpec().to_dict()
    assert meta.provenance["best_step"] == trainer.best_step
    assert [p.name for p in tmp_path.iterdir()] == ["model.msd"]  # no temporary files left


def test_existing_output_is_refused_before_any_training(tmp_path, data, monkeypatch, accept_any_network):
    out = tmp_path / "model.msd"
    out.write_bytes(b"precious")

    def no_training(*args, **kwargs):
        raise AssertionError("training data was touched before the output was checked")

    monkeypatch.setattr(engine_module, "split", no_training)
    with pytest.raises(FileExistsError) as err:
        Trainer(data, _config(), output=out)
    assert str(out) in _one_line(err)
    assert out.read_bytes() == b"precious"
    monkeypatch.undo()
    monkeypatch.setattr(engine_module.net_health, "DOMINANT", 1.01)  # undone above with the rest: 2 steps learn nothing
    events = list(Trainer(data, _config(steps=2), output=out, overwrite=True).run())
    assert events[-1].path == str(out)
    load_model(out)


def test_crash_while_saving_leaves_the_previous_model_intact(tmp_path, data, monkeypatch):
    out = tmp_path / "model.msd"
    trainer = Trainer(data, _config(steps=30), output=out)
    run = trainer.run()
    for event in run:
        if isinstance(event, Saved):
            break
    else:
        pytest.fail("no model was saved")
    good = out.read_bytes()
    good_step = read_metadata(out).provenance["steps"]

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        for _ in run:  # the final save (at least) must happen, and fail
            pass
    monkeypatch.undo()
    assert out.read_bytes() == good
    model, meta = load_model(out)
    assert meta.provenance["steps"] == good_step
    assert [p.name for p in tmp_path.iterdir()] == ["model.msd"]  # the partial temporary file is gone
    _wait_for(lambda: not _patch_threads(), timeout=10)  # the patch thread ended with the run


def test_save_refuses_to_overwrite_unless_asked(tmp_path, data):
    trainer = Trainer(data, _config(steps=2))
    list(trainer.run())
    path = trainer.save(tmp_path / "a.msd")
    with pytest.raises(FileExistsError):
        trainer.save(path)
    trainer.save(path, overwrite=True)
    load_model(path)


# -- when a run ends ------------------------------------------------------------------------------------------


def _constant_metrics(cm, class_names):
    return {"global_accuracy": 0.5, "class_accuracy": 0.5, "mean_iou": 0.25, "iou": {}, "pixels": int(cm.sum())}


def test_early_stopping_restores_the_best_weights(tmp_path, data, monkeypatch, accept_any_network):
    scores = iter([0.6, 0.5, 0.5, 0.5])  # the first validation is the best; then the score only drops

    def falling_metrics(cm, class_names):
        score = next(scores)
        return {
            "global_accuracy": score,
            "class_accuracy": score,
            "mean_iou": score,
            "iou": {},
            "pixels": int(cm.sum()),
        }

    monkeypatch.setattr(engine_module, "_metrics_from", falling_metrics)
    out = tmp_path / "model.msd"
    trainer = Trainer(data, _config(steps=1000, validate_every=5, patience=1), output=out)
    best = later = None
    events = []
    for event in trainer.run():
        events.append(event)
        if isinstance(event, Validated):
            if event.improved:
                best = _state(trainer.model)
            else:
                later = _state(trainer.model)
    finished = events[-1]
    assert finished.reason == "early stopping"
    assert finished.steps == 10 and finished.best_step == 5
    assert [(v.step, v.improved) for v in _of(events, Validated)] == [(5, True), (10, False)]
    assert not _same_state(best, later), "the weights moved after the best validation"
    assert _same_state(_state(trainer.model), best)
    model, _ = load_model(out)
    assert _same_state(_state(model), best)


def test_equal_scores_keep_the_weights_with_the_lower_validation_loss(data, monkeypatch, accept_any_network):
    monkeypatch.setattr(engine_module, "_metrics_from", _constant_metrics)  # accuracy saturated
    events = list(Trainer(data, _config(steps=12, validate_every=3, patience=0)).run())
    validations = _of(events, Validated)
    losses = [v.metrics["loss"] for v in validations]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert events[-1].best_step == validations[best].step
    assert events[-1].best_metrics["loss"] == pytest.approx(min(losses))


def test_patience_zero_never_stops_early(data, monkeypatch):
    monkeypatch.setattr(engine_module, "_metrics_from", _constant_metrics)
    events = list(Trainer(data, _config(steps=12, validate_every=2, patience=0)).run())
    assert events[-1].reason == "steps" and events[-1].steps == 12


def test_time_limit_ends_the_run(data):
    trainer = Trainer(data, _config(steps=None, time_limit=1.0, validate_every=1000))
    start = time.monotonic()
    events = list(trainer.run())
    wall = time.monotonic() - start
    finished = events[-1]
    assert finished.reason == "time"
    assert 1.0 <= finished.elapsed < 1.5
    assert wall < 6.0
    steps = _of(events, TrainStep)
    assert steps[-1].progress == pytest.approx(1.0)
    assert all(s.eta is not None and s.eta >= 0 for s in steps)
    assert _of(events, Validated)[-1].step == finished.steps  # the result is validated


def test_steps_and_time_limit_whichever_comes_first(data):
    events = list(Trainer(data, _config(steps=3, time_limit=60.0)).run())
    assert events[-1].reason == "steps" and events[-1].steps == 3


class _FakeClock:
    """Stands in for the engine's ``time`` module: seconds pass only when a test says so."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for the engine; ``clock.costs`` (step number -> seconds, default 1) and ``clock.validation``
    (seconds) are what each training step and each validation pass take."""
    fake = _FakeClock()
    fake.costs, fake.validation = {}, 0.0
    monkeypatch.setattr(engine_module, "time", fake)
    monkeypatch.setattr(halo_module, "time", fake)  # the halo measurement's deadline is on the engine's clock
    train_step, evaluate = Trainer._train_step, Trainer._evaluate_tiles

    def step(self, x, y):
        fake.now += fake.costs.get(self.step + 1, 1.0)
        return train_step(self, x, y)

    def validate(self):
        fake.now += fake.validation
        return evaluate(self)

    monkeypatch.setattr(Trainer, "_train_step", step)
    monkeypatch.setattr(Trainer, "_evaluate_tiles", validate)
    return fake


def test_validation_time_counts_against_the_time_limit(data, clock, accept_any_network):
    clock.validation = 3.0  # steps 1 s each, validations 3 s: 1, 2 (+3 = 5), 6, 7 (+3 = 10): time is up
    trainer = Trainer(data, _config(steps=None, time_limit=10.0, validate_every=2, patience=0))
    events = list(trainer.run())
    finished = events[-1]
    assert finished.reason == "time" and finished.steps == 4 and finished.elapsed == pytest.approx(10.0)
    assert [v.step for v in _of(events, Validated)] == [2, 4]
    assert finished.effective_halo is not None and not trainer.halo_skipped  # measured within the grace


def test_far_past_the_time_limit_the_wrap_up_is_skipped(tmp_path, data, clock, accept_any_network):
    """A step that overruns the limit (a loaded machine) is not validated and the halo is not measured: the
    best validated weights are saved with the receptive field as halo, and the provenance says so."""
    clock.costs = {3: 20.0}
    out = tmp_path / "late.msd"
    trainer = Trainer(data, _config(steps=None, time_limit=10.0, validate_every=2, patience=0), output=out)
    events = list(trainer.run())
    finished = events[-1]
    assert finished.reason == "time" and finished.steps == 3
    assert [v.step for v in _of(events, Validated)] == [2] and finished.best_step == 2
    assert finished.effective_halo is None and trainer.halo_skipped
    meta = read_metadata(out)
    assert meta.effective_halo is None  # the Predictor falls back to the receptive field
    assert "not measured: the time limit was reached" in meta.provenance["halo"]


def test_a_tiny_time_limit_ends_without_measuring_the_halo(data, monkeypatch, accept_any_network):
    from napari_msd.inference import halo

    calls = []
    real = halo.measure_effective_halo
    monkeypatch.setattr(halo, "measure_effective_halo", lambda *a, **k: calls.append(1) or real(*a, **k))
    trainer = Trainer(data, _config(steps=None, time_limit=1e-9, validate_every=1000))
    events = list(trainer.run())
    finished = events[-1]
    assert finished.reason == "time" and finished.steps == 1
    assert _of(events, Validated)[-1].step == 1  # the only validation is never skipped: it guards against collapse
    assert calls and finished.effective_halo is None and trainer.halo_skipped  # stopped before its first block
    assert "halo" in trainer.metadata().provenance


# -- fine-tuning ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, task):
    """Model A, trained on image 1 with both classes painted."""
    image, labels, _ = task
    path = tmp_path_factory.mktemp("base") / "a.msd"
    config = _config(steps=30, class_names=["dark", "bright"], class_colors=["#112233", "#ddeeff"])
    trainer = Trainer([TrainingData(image, labels, name="one")], config, output=path)
    assert list(trainer.run())[-1].best_metrics["global_accuracy"] >= 0.9
    return path


def _accuracy_on_strokes(model, normalization, image, labels, predict):
    pred = predict(model, normalization, image)
    return {c: float((pred[labels == c] == c).mean()) for c in (1, 2)}


def test_fine_tuning_with_replay_remembers_earlier_annotations(base_model, task, make_task, predict, tmp_path):
    image1, labels1, _ = task
    # image 2 is brighter and only its bright class is painted: alone, these labels teach "all bright"
    image2, labels2, _ = make_task(seed=1, levels=(90, 210), classes=(2,))
    assert set(np.unique(labels2)) == {0, 2}
    base_meta = read_metadata(base_model)
    out = tmp_path / "b.msd"
    # the architecture and input settings given here are ignored: a fine-tuned model keeps A's
    # no edge-aware loss here or in the control below: it resists this drift on its own, and the pair isolates replay
    config = _config(steps=20, arch="unet", model={"depth": 2}, input=InputSpec(mode="2.5d", slices=3), edge_weight=0)
    trainer = Trainer(
        [TrainingData(image2, labels2, name="two")],
        config,
        init=base_model,
        replay=[TrainingData(image1, labels1, name="one")],
        output=out,
    )
    events = list(trainer.run())
    assert events[0].fine_tuning is True and events[0].class_names == ["dark", "bright"]
    assert events[-1].reason == "steps"

    accuracy = _accuracy_on_strokes(trainer.snapshot(), trainer.normalization, image1, labels1, predict)
    assert accuracy[1] >= 0.9 and accuracy[2] >= 0.9, accuracy

    model, meta = load_model(out)
    assert meta.arch == base_meta.arch == "msd" and meta.config == base_meta.config
    assert meta.input == base_meta.input
    assert meta.normalization == base_meta.normalization  # not re-estimated on the brighter image
    assert meta.class_names == ["dark", "bright"] and meta.class_colors == ["#112233", "#ddeeff"]
    source = meta.provenance["fine_tuned_from"]
    assert source["source"] == str(base_model)
    assert source["created"] == base_meta.provenance["created"]
    assert source["steps"] == base_meta.provenance["steps"]
    assert meta.provenance["replayed_images"] == 1


def test_without_replay_the_same_fine_tuning_forgets(base_model, task, make_task, predict):
    """The control for the test above: these labels do bias the model when nothing is replayed."""
    image1, labels1, _ = task
    image2, labels2, _ = make_task(seed=1, levels=(90, 210), classes=(2,))
    config = _config(steps=20, edge_weight=0, seen_tolerance=1.0)  # the network itself, not the kept parent
    trainer = Trainer([TrainingData(image2, labels2)], config, init=base_model)
    list(trainer.run())
    accuracy = _accuracy_on_strokes(trainer.snapshot(), trainer.normalization, image1, labels1, predict)
    assert accuracy[1] < 0.5, accuracy


def test_a_fine_tuning_that_changes_what_was_left_around_the_corrections_keeps_the_parent(
    base_model, task, make_task, monkeypatch
):
    """Corrections (new labels on the image the parent learned, whose labels are replayed) get rings
    (training.seen); a result that changes more than ``seen_tolerance`` of them gives way to the parent as saved,
    with its figures and halo and the reason in words. Here the agreement is forced; test_seen checks its measure."""
    from napari_msd.training import seen

    image, labels, _ = task
    new, old = np.where(labels == 2, labels, 0), np.where(labels == 1, labels, 0)
    parent, meta = load_model(base_model)
    monkeypatch.setattr(seen.SeenRings, "agreement", lambda self, model: 0.9)
    trainer = Trainer(
        [TrainingData(image, new, "new")],
        _config(steps=20),
        init=base_model,
        replay=[TrainingData(image, old, "earlier")],
    )
    events = list(trainer.run())
    finished = _of(events, TrainingFinished)[-1]
    assert len(trainer.seen) > 0
    assert finished.kept_parent and finished.best_step == 0 and trainer.seen_agreement == 0.9
    assert finished.kept_parent_because == "it changed 10% of the prediction left as it was around the corrections"
    assert _same_state(_state(trainer.snapshot()), _state(parent))
    assert trainer.effective_halo == meta.effective_halo
    parent_figures = _of(events, Validated)[0]
    assert parent_figures.step == 0
    assert {k: v for k, v in finished.best_metrics.items() if k != "health"} == parent_figures.metrics
    monkeypatch.setattr(seen.SeenRings, "agreement", lambda self, model: 0.98)  # within the tolerance: a version
    trainer = Trainer(
        [TrainingData(image, new, "new")],
        _config(steps=20),
        init=base_model,
        replay=[TrainingData(image, old, "earlier")],
    )
    finished = _of(list(trainer.run()), TrainingFinished)[-1]
    assert not finished.kept_parent or finished.kept_parent_because.startswith("it never beat")
    other, other_labels, _ = make_task(seed=1, levels=(90, 210), classes=(2,))  # new data, not corrections
    assert len(Trainer([TrainingData(other, other_labels)], _config(steps=1), init=base_model).seen) == 0
    with pytest.raises(ValueError, match="seen_tolerance"):
        Trainer([TrainingData(image, new)], _config(seen_tolerance=2.0), init=base_model)


def test_fine_tuning_from_a_model_in_memory(base_model, task):
    image, labels, _ = task
    model, meta = load_model(base_model)
    before = _state(model)
    trainer = Trainer([TrainingData(image, labels)], _config(steps=3), init=(model, meta))
    events = list(trainer.run())
    assert events[0].fine_tuning and events[-1].steps == 3
    assert trainer.metadata().provenance["fine_tuned_from"]["source"] == "model in memory"
    assert trainer.metadata().provenance["replayed_images"] == 0
    assert not _same_state(_state(trainer.model), before)  # it did train
    # the caller's model is an earlier version the user may go back to: fine-tuning must not change it
    assert _same_state(_state(model), before), "fine-tuning trained the caller's model in place"
    assert not model.training


def test_fine_tuning_a_model_file_without_stored_normalisation(tmp_path, data, accept_any_network):
    """A valid model file may hold no normalisation ({}: unset); fine-tuning must not crash on it."""
    path = save_model(tmp_path / "bare.msd", MSDNet(1, 2, depth=4))
    assert read_metadata(path).normalization == {}
    try:
        trainer = Trainer(data, _config(steps=2), init=path, output=tmp_path / "tuned.msd")
    except ValueError as err:  # a clear refusal is acceptable too
        assert "\n" not in str(err) and "normali" in str(err).lower()
        return
    list(trainer.run())
    stored = read_metadata(tmp_path / "tuned.msd").normalization
    assert math.isfinite(stored["low"]) and stored["high"] > stored["low"]


def test_fine_tuning_refuses_more_classes_than_the_model_has(base_model, task):
    image, labels, _ = task
    labels = labels.copy()
    labels[5, 5:15] = 3
    with pytest.raises(TrainingDataError) as err:
        Trainer([TrainingData(image, labels)], _config(), init=base_model)
    text = _one_line(err)
    assert "3" in text and "2 classes" in text


def test_fine_tuning_may_paint_a_single_class(base_model, task):
    image, labels, _ = task
    only_one = np.where(labels == 1, 1, 0).astype(np.uint8)
    for teacher in (0.0, 1.0):  # the forest teacher needs two classes: it sits out rather than failing
        trainer = Trainer([TrainingData(image, only_one)], _config(steps=2, teacher_weight=teacher), init=base_model)
        events = list(trainer.run())
        assert events[-1].steps == 2 and not trainer.teacher_active


# -- bad input: one line, at construction ---------------------------------------------------------------------


def _bad_inputs(image, labels):
    two_d = image
    return {
        "no labeled pixel": ([TrainingData(two_d, np.zeros_like(labels))], {}, TrainingDataError, "no labeled"),
        "one class only": (
            [TrainingData(two_d, np.where(labels == 2, 2, 0).astype(np.uint8))],
            {},
            TrainingDataError,
            "class 2",
        ),
        "float labels": ([TrainingData(two_d, labels.astype(np.float32))], {}, TrainingDataError, "integer"),
        "2.5d on a 2D image": (
            [TrainingData(two_d, labels)],
            {"input": InputSpec(mode="2.5d", slices=3)},
            ValueError,
            "2D",
        ),
        "RGB-like 4D image": (
            [TrainingData(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 32, 32, 3), np.uint8))],
            {},
            ValueError,
            "4 dimensions",
        ),
        "shape mismatch": ([TrainingData(two_d, labels[:-1])], {}, TrainingDataError, "shape"),
        "no data": ([], {}, TrainingDataError, "no training data"),
        "no bound": ([TrainingData(two_d, labels)], {"steps": None}, ValueError, "steps"),
        "bad metric": ([TrainingData(two_d, labels)], {"metric": "f1"}, ValueError, "metric"),
        "wrong class names": ([TrainingData(two_d, labels)], {"class_names": ["a", "b", "c"]}, ValueError, "names"),
        "negative edge weight": ([TrainingData(two_d, labels)], {"edge_weight": -1.0}, ValueError, "edge-aware"),
        "unknown precision": ([TrainingData(two_d, labels)], {"precision": "half"}, ValueError, "precision must be"),
        "image as labels": ([TrainingData(two_d, two_d)], {}, TrainingDataError, "is this the image?"),
    }


CASES = [
    "no labeled pixel",
    "one class only",
    "float labels",
    "2.5d on a 2D image",
    "RGB-like 4D image",
    "shape mismatch",
    "no data",
    "no bound",
    "bad metric",
    "wrong class names",
    "negative edge weight",
    "unknown precision",
    "image as labels",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_with_one_line(case, task, tmp_path):
    image, labels, _ = task
    cases = _bad_inputs(image, labels)
    assert sorted(cases) == sorted(CASES)
    data, overrides, error, words = cases[case]
    out = tmp_path / "never.msd"
    with pytest.raises(error) as err:
        Trainer(data, _config(**overrides), output=out)
    assert words in _one_line(err)
    assert not out.exists()


# -- the precision of MS-D's products ------------------------------------------------------------------------------


def test_an_msd_trained_with_bfloat16_products_learns_keeps_float32_weights_and_says_so(task, data, predict, tmp_path):
    image, _, truth = task
    out = tmp_path / "bf16.msd"
    trainer = Trainer(data, _config(precision="bfloat16"), output=out)
    events = list(trainer.run())
    assert events[0].products == "bfloat16"
    steps = _of(events, TrainStep)
    assert np.mean([s.loss for s in steps[-5:]]) < np.mean([s.loss for s in steps[:5]])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert (predict(trainer.snapshot(), trainer.normalization, image) == truth).mean() >= 0.75  # as float32's test
    assert "bfloat16" in read_metadata(out).provenance["precision"]


@pytest.mark.parametrize(("arch", "products"), [(MSD, "float32"), (UNET, "")], ids=["msd", "unet"])
def test_the_default_trains_in_float32_and_other_networks_name_no_products(arch, products, data, monkeypatch):
    calls = []
    monkeypatch.setattr(
        engine_module, "training_products", lambda dtype: calls.append(dtype) or contextlib.nullcontext()
    )
    trainer = Trainer(data, _config(steps=2, **arch))
    events = list(trainer.run())
    assert events[0].products == products and calls == [torch.float32, torch.float32]


def test_auto_products_follow_the_choice_of_forwards_without_gradients(data, monkeypatch):
    from napari_msd.models import precision

    monkeypatch.setenv("NAPARI_MSD_PRECISION", "auto")
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda: 3.0)  # as on a CPU with fast native bfloat16
    assert Trainer(data, _config(steps=1, precision="auto")).products == torch.bfloat16
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda: 1.0)
    assert Trainer(data, _config(steps=1, precision="auto")).products == torch.float32
    assert Trainer(data, _config(steps=1)).products == torch.float32  # the default, wherever it runs


# -- the edge-aware loss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_edge_weight_adds_the_potts_term_on_the_training_patches(weight, data, monkeypatch):
    """Each step's loss is cross-entropy plus the edge-aware term on the very logits and input patch; 0 = off."""
    from napari_msd.training import potts

    seen = []
    forward = potts.EdgePotts.forward

    def spy(self, logits, image):
        value = forward(self, logits, image)
        seen.append((self.weight, tuple(logits.shape), tuple(image.shape), float(value.detach())))
        return value

    monkeypatch.setattr(potts.EdgePotts, "forward", spy)
    trainer = Trainer(data, _config(steps=3, edge_weight=weight))
    steps = _of(list(trainer.run()), TrainStep)
    if weight == 0:
        assert seen == []
        return
    assert len(seen) == 3
    for (w, logits, image, value), step in zip(seen, steps):
        assert w == weight and logits[0] == image[0] == 4 and logits[2:] == image[2:] == (48, 48)
        assert 0 < value < step.loss  # reported loss = cross-entropy + this term


# -- a loop that only gets better: collapsed networks are never kept, fine-tuning never ends below its parent ------


def test_a_collapsed_network_is_never_saved(tmp_path, data):
    """With a zero output layer and no learning to speak of, the network predicts one class everywhere."""
    out = tmp_path / "model.msd"
    trainer = Trainer(data, _config(steps=20, learning_rate=1e-9), output=out)
    events = list(trainer.run())
    validations = _of(events, Validated)
    assert validations and all(v.collapsed and not v.improved for v in validations)
    finished = events[-1]
    assert "the network predicts class" in finished.collapsed and finished.path is None
    assert trainer.collapsed == finished.collapsed and not _of(events, Saved)
    assert not out.exists()


def test_fine_tuning_that_cannot_beat_its_parent_keeps_the_parent(base_model, task, tmp_path):
    image, labels, _ = task
    model, meta = load_model(base_model)
    before = _state(model)
    out = tmp_path / "child.msd"
    trainer = Trainer(
        [TrainingData(image, labels)], _config(steps=20, learning_rate=50.0), init=(model, meta), output=out
    )
    events = list(trainer.run())
    validations = _of(events, Validated)
    assert validations[0].step == 0 and validations[0].improved  # the parent, judged on the same held-out labels
    assert not any(v.improved for v in validations[1:])  # a learning rate of 50 wrecks the network
    finished = events[-1]
    assert finished.kept_parent and trainer.kept_parent and finished.best_step == 0 and finished.collapsed is None
    assert _same_state(_state(trainer.model), before)
    child, _ = load_model(out)  # what is saved has the parent's weights
    assert _same_state(_state(child), before)


def test_fine_tuning_that_improves_replaces_the_parent(base_model, make_task, tmp_path):
    image, labels, _ = make_task(seed=3, levels=(90, 160))  # another image the parent has not seen
    model, meta = load_model(base_model)
    trainer = Trainer([TrainingData(image, labels)], _config(steps=30), init=(model, meta))
    events = list(trainer.run())
    finished = events[-1]
    assert _of(events, Validated)[0].step == 0
    assert not finished.kept_parent and finished.best_step > 0
    assert finished.best_metrics["global_accuracy"] >= _of(events, Validated)[0].metrics["global_accuracy"]
    assert finished.best_metrics["health"]["collapsed"] is None


def test_fine_tuning_that_forgets_the_replayed_labels_keeps_the_parent(base_model, task, make_task, monkeypatch):
    """Each validation also scores the held-out part of the replayed (earlier) labels; a version that loses more
    than FORGET_TOLERANCE of the parent's class accuracy there is not better, whatever it gains on new labels.
    A tolerance below -1 makes every fine-tuned weight 'forgetful': only the parent can remain."""
    image1, labels1, _ = task
    image2, labels2, _ = make_task(seed=3, levels=(90, 160))
    model, meta = load_model(base_model)
    before = _state(model)
    monkeypatch.setattr(engine_module, "FORGET_TOLERANCE", -1.01)
    trainer = Trainer(
        [TrainingData(image2, labels2, "two")],
        _config(steps=20),
        init=(model, meta),
        replay=[TrainingData(image1, labels1, "one")],
    )
    events = list(trainer.run())
    validations = _of(events, Validated)
    assert trainer.replay_from < len(trainer.val_tiles)  # the replayed labels have held-out tiles of their own
    assert all("replay_class_accuracy" in v.metrics for v in validations)
    assert validations[0].step == 0 and not any(v.improved for v in validations[1:])
    assert events[-1].kept_parent and _same_state(_state(trainer.model), before)
    monkeypatch.setattr(engine_module, "FORGET_TOLERANCE", 1.0)  # anything goes: the child wins on new labels
    trainer = Trainer(
        [TrainingData(image2, labels2, "two")],
        _config(steps=20),
        init=(model, meta),
        replay=[TrainingData(image1, labels1, "one")],
    )
    assert not list(trainer.run())[-1].kept_parent


# -- work between steps, the weight average ------------------------------------------------------------------


def test_work_between_steps_runs_on_the_training_thread_and_counts_as_training_time(data):
    trainer = Trainer(data, _config(steps=500, validate_every=1000))
    thread, events, errors = _run_in_thread(trainer)
    try:
        _wait_for(lambda: trainer.step >= 2)
        future = trainer.between_steps(lambda: (time.sleep(0.5), threading.get_ident(), trainer.step)[1:])
        ident, step = future.result(timeout=30)
        assert ident == thread.ident  # not the caller's thread, nor a new one
        _wait_for(lambda: trainer.step >= step + 2)
        steps = {e.step: e for e in _of(events, TrainStep)}
        assert steps[step + 1].elapsed - steps[step].elapsed >= 0.5
        trainer.pause()
        _wait_for(lambda: any(isinstance(e, Paused) and e.paused for e in events))
        frozen = trainer.step
        assert trainer.between_steps(lambda: trainer.step).result(timeout=30) == frozen  # served while paused
    finally:
        trainer.stop()
        thread.join(timeout=30)
    assert not errors and events[-1].reason == "stopped"
    assert trainer.between_steps(lambda: "after").result(timeout=1) == "after"


def test_the_weight_average_is_what_is_validated_and_kept(tmp_path, data, monkeypatch, accept_any_network):
    seen = []
    original = engine_module.Trainer._evaluate_tiles

    def evaluate(self):
        if self.average is not None:
            seen.append((self._judged is self.average.model, _same_state(_state(self._judged), _state(self.model))))
        return original(self)

    monkeypatch.setattr(engine_module.Trainer, "_evaluate_tiles", evaluate)
    trainer = Trainer(data, _config(steps=20, validate_every=10, weight_average=0.9), output=tmp_path / "m.msd")
    during = trainer.snapshot()
    list(trainer.run())
    assert len(seen) >= 2 and all(is_average for is_average, _ in seen)
    assert not any(same for _, same in seen[1:])  # after some steps the average lags the raw weights
    assert trainer.average is None  # after the run the result is one network: the best average
    assert _same_state(_state(trainer.model), trainer.best_state)
    saved, _ = load_model(tmp_path / "m.msd")
    assert _same_state(_state(saved), _state(trainer.model))
    assert not _same_state(_state(during), _state(trainer.model))


def test_a_weight_average_outside_0_1_is_refused(data):
    with pytest.raises(ValueError, match="weight_average"):
        Trainer(data, _config(weight_average=1.0))


def test_fine_tuning_scales_the_learning_rate_and_starts_the_average_at_the_parent(base_model, data):
    config = _config(learning_rate=1e-2, fine_tune_lr_factor=0.25, weight_average=0.9)
    fresh = Trainer(data, config)
    tuned = Trainer(data, config, init=base_model)
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert tuned.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-3)
    assert fresh.average.current_decay() < 0.5 and tuned.average.current_decay() == 0.9
    parent, _ = load_model(base_model)
    assert _same_state(_state(tuned._judged), _state(parent))


def test_fine_tuning_warms_the_learning_rate_up_over_the_first_steps(base_model, data):
    config = _config(learning_rate=1e-2, fine_tune_warmup=4, steps=3, validate_every=100)
    tuned = Trainer(data, config, init=base_model)
    seen = []
    step = tuned.optimizer.step
    tuned.optimizer.step = lambda: (seen.append(tuned.optimizer.param_groups[0]["lr"]), step())
    list(tuned.run())
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3])
    fresh = Trainer(data, config)  # a new network starts at its full rate
    assert fresh.warmup == 0
    with pytest.raises(ValueError, match="fine_tune_warmup"):
        Trainer(data, _config(fine_tune_warmup=-1))


def test_a_linear_schedule_decays_the_learning_rate_over_the_steps(data):
    trainer = Trainer(data, _config(learning_rate=1e-2, lr_schedule="linear", steps=4, validate_every=100))
    seen = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: (seen.append(trainer.optimizer.param_groups[0]["lr"]), step())
    list(trainer.run())
    assert seen == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    with pytest.raises(ValueError, match="learning-rate schedule 'fast'"):
        Trainer(data, _config(lr_schedule="fast"))


def test_a_fine_tuning_can_be_taught_by_its_parent_instead_of_the_forest(base_model, data):
    config = _config(distill_weight=1.0, teacher_weight=1.0, steps=2, validate_every=100)
    tuned = Trainer(data, config, init=base_model)
    parent_state = _state(tuned.distill.parent)
    finished = _of(list(tuned.run()), TrainingFinished)[-1]
    assert not tuned.teacher_active  # the parent replaced the forest
    assert _same_state(_state(tuned.distill.parent), parent_state)  # the teacher stays frozen
    assert tuned.metadata().provenance["teacher"] == {"kind": "parent network", "weight": 1.0}
    assert finished.steps == 2
    assert Trainer(data, config).distill is None  # a new network has no parent
    with pytest.raises(ValueError, match="distill_weight"):
        Trainer(data, _config(distill_weight=-1))


# -- forest channels (training.context) -------------------------------------------------------------------------------
def test_a_new_network_takes_the_forest_channels_and_keeps_its_forest(task, tmp_path):
    from napari_msd.inference import Predictor

    image, labels, _ = task
    path = tmp_path / "forest.msd"
    trainer = Trainer([TrainingData(image, labels)], _config(steps=12, forest_channels=True), output=path)
    events = list(trainer.run())
    started = _of(events, TrainingStarted)[0]
    assert started.forest_channels == 2 and trainer.model.in_channels == 3
    prov = trainer.metadata().provenance["forest_channels"]
    assert prov["out_of_fold_forests"] == 2 and prov["in_sample_planes"] == 0  # one plane: its two halves
    model, meta = load_model(path)
    assert _same_state(_state(model.forest), _state(trainer.model.forest)) and meta.config["forest"]["n_classes"] == 2
    predictor = Predictor(model, meta)
    whole = predictor.predict(image)
    assert whole.shape == (2, *image.shape)
    tiled = np.zeros_like(whole)
    for done in predictor.blocks(image, block_shape=(64, 64), halo=predictor.receptive_field):
        tiled[(slice(None), *done.block.out)] = done.probabilities
    assert np.abs(tiled - whole).max() < 1e-5  # the forest reads its own context beyond every tile
    with pytest.raises(ValueError, match="predict xy planes with it"):
        Predictor(model, meta, orientation="xz")


def test_fine_tuning_keeps_the_parents_forest(task, tmp_path):
    image, labels, _ = task
    parent = tmp_path / "parent.msd"
    list(Trainer([TrainingData(image, labels)], _config(steps=6, forest_channels=True), output=parent).run())
    parent_model, _ = load_model(parent)
    more = np.zeros_like(labels)
    more[100:104, 20:60] = 2
    child = Trainer(
        [TrainingData(image, more)],
        _config(steps=6, forest_channels=False),  # fine-tuning follows the parent, whatever is asked
        init=parent,
        replay=[TrainingData(image, labels)],
    )
    assert child.context is not None and child.model.in_channels == 3
    assert _same_state(_state(child.model.forest), _state(parent_model.forest))
    list(child.run())
    assert _same_state(_state(child.model.forest), _state(parent_model.forest))


def test_without_forest_channels_the_network_takes_the_image_alone(task):
    image, labels, _ = task
    trainer = Trainer([TrainingData(image, labels)], _config(steps=2, forest_channels=False))
    assert trainer.model.in_channels == 1 and trainer.context is None and not hasattr(trainer.model, "forest")
    assert _of(list(trainer.run()), TrainingStarted)[0].forest_channels == 0
