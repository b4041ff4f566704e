"""Training an ensemble: members one after another from their own seeds, tagged events, stop and skip, a shared
time limit, retraining every member from one file, collapsed members left out, and the same in the training
process."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from napari_msd.io.model_file import load_model
from napari_msd.models import Ensemble, ensemble_config
from napari_msd.training import ensemble as ensemble_module
from napari_msd.training.engine import Trainer
from napari_msd.training.ensemble import EnsembleTrainer, make_trainer, member_metadata, train_ensemble
from napari_msd.training.events import (
    MemberEvent,
    MemberFinished,
    MemberStarted,
    Saved,
    TrainingFinished,
    TrainingStarted,
    TrainStep,
    Validated,
)
from napari_msd.training.sampling import TrainingData

from helpers.training import tiny_config

TWO = {"arch": "ensemble", "model": ensemble_config("msd", {"depth": 8}, 2)}


def _config(**overrides):
    return tiny_config(**{**TWO, "steps": 20, **overrides})


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def _inner(events, kind, member=None):
    return [
        e.event
        for e in events
        if isinstance(e, MemberEvent) and isinstance(e.event, kind) and member in (None, e.member)
    ]


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def ensemble_file(tmp_path_factory, task):
    """A two-member ensemble trained on the checkerboard, saved."""
    image, labels, _ = task
    path = tmp_path_factory.mktemp("ensemble") / "e.msd"
    config = _config(steps=30, class_names=["dark", "bright"], prior_correction=True)
    events = list(EnsembleTrainer([TrainingData(image, labels, "one")], config, output=path).run())
    assert events[-1].path == str(path) and events[-1].collapsed is None
    return path


def test_members_train_one_after_another_from_their_own_seeds_into_one_file(data, tmp_path, predict, task):
    out = tmp_path / "e.msd"
    trainer = EnsembleTrainer(data, _config(steps=30), output=out)
    events = list(trainer.run())

    started, finished_members = _of(events, MemberStarted), _of(events, MemberFinished)
    assert [(s.member, s.n_members, s.seed, s.arch) for s in started] == [(0, 2, 0, "msd"), (1, 2, 1, "msd")]
    assert [(f.member, f.kept, f.steps) for f in finished_members] == [(0, True, 30), (1, True, 30)]
    for m in (0, 1):  # every engine event comes tagged with its member, in the engine's order
        inner = [e.event for e in events if isinstance(e, MemberEvent) and e.member == m]
        assert isinstance(inner[0], TrainingStarted) and isinstance(inner[-1], TrainingFinished)
        assert [s.step for s in inner if isinstance(s, TrainStep)] == list(range(1, 31))
    assert all(e.n_members == 2 for e in events if isinstance(e, MemberEvent))
    assert events.index(started[1]) > events.index(finished_members[0])  # one after another
    assert isinstance(events[-2], Saved) and isinstance(events[-1], TrainingFinished)
    finished = events[-1]
    assert finished.steps == 60 == trainer.step and finished.path == str(out) and finished.collapsed is None
    members = [e.event.best_metrics["global_accuracy"] for e in events if isinstance(e, MemberEvent)
               if isinstance(e.event, TrainingFinished)]  # fmt: skip
    assert finished.best_metrics["global_accuracy"] == pytest.approx(np.mean(members))

    model, meta = load_model(out)
    assert isinstance(model, Ensemble) and model.n_members == 2 and meta.arch == "ensemble"
    assert not _same(model.members[0], model.members[1])  # other seeds: other weights
    assert [p["seed"] for p in meta.provenance["members"]] == [0, 1] and meta.provenance["steps"] == 60
    assert meta.provenance["ensemble"]["members"] == 2 and not meta.provenance["ensemble"]["left_out"]
    halos = [p["effective_halo"] for p in meta.provenance["members"]]
    assert meta.effective_halo == max(halos) and meta.receptive_field == model.receptive_field
    assert _same(trainer.snapshot(), model) and trainer.metadata().config == meta.config
    image, _, truth = task
    norm = trainer.normalization
    assert meta.normalization == norm.to_dict()
    assert (predict(model, norm, image) == truth).mean() >= 0.75  # the mean of the members segments the image


def test_every_member_is_fed_the_first_members_normalisation(data, monkeypatch):
    seen = []
    real = ensemble_module.Trainer

    class Spy(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.config.seed, self.config.time_limit, self.normalization.to_dict()))

    monkeypatch.setattr(ensemble_module, "Trainer", Spy)
    trainer = EnsembleTrainer(data, _config(model=ensemble_config("msd", {"depth": 4}, 3), steps=None, time_limit=3.0))
    list(trainer.run())
    assert [s[0] for s in seen] == [0, 1, 2]  # seeds
    assert [s[1] for s in seen] == [pytest.approx(1.0)] * 3  # the time limit, shared: the CPU minutes of one network
    assert seen[0][2] == seen[1][2] == seen[2][2]


def test_stop_keeps_the_member_in_training_and_trains_no_other(data, accept_any_network):
    trainer = EnsembleTrainer(data, _config(model=ensemble_config("msd", {"depth": 4}, 3), steps=400))
    events = []
    for event in trainer.run():
        events.append(event)
        if isinstance(event, MemberEvent) and isinstance(event.event, TrainStep) and event.event.step == 5:
            trainer.stop()
    assert [s.member for s in _of(events, MemberStarted)] == [0]
    finished = _of(events, MemberFinished)
    assert [(f.member, f.kept) for f in finished] == [(0, True), (1, False), (2, False)]
    assert "stopped" in finished[1].why and finished[0].steps < 400
    assert events[-1].reason == "stopped" and events[-1].steps == finished[0].steps
    assert trainer.snapshot().n_members == 1


def test_skip_leaves_the_member_in_training_out_and_goes_on(data, accept_any_network):
    trainer = EnsembleTrainer(data, _config(model=ensemble_config("msd", {"depth": 4}, 2), steps=400))
    events = []
    for event in trainer.run():
        events.append(event)
        if isinstance(event, MemberEvent) and event.member == 0 and isinstance(event.event, TrainStep):
            if event.event.step == 3:
                trainer.skip_member()
        if isinstance(event, MemberEvent) and event.member == 1 and isinstance(event.event, TrainStep):
            if event.event.step == 3:
                trainer.stop()
    finished = _of(events, MemberFinished)
    assert [(f.member, f.kept, f.why) for f in finished] == [(0, False, "skipped"), (1, True, None)]
    assert trainer.snapshot().n_members == 1 and trainer.n_kept == 1  # only the second member is in it
    assert trainer.left_out == {0: "skipped"}


def test_the_generator_stops_on_an_event(data, accept_any_network, tmp_path):
    stop = threading.Event()
    events = []
    for event in train_ensemble(data, _config(steps=400), output=tmp_path / "e.msd", stop=stop):
        events.append(event)
        if isinstance(event, MemberEvent) and isinstance(event.event, TrainStep) and event.event.step == 4:
            stop.set()
    assert events[-1].reason == "stopped" and (tmp_path / "e.msd").exists()
    assert len(_of(events, MemberStarted)) == 1


def test_a_collapsed_member_is_left_out_and_none_left_saves_nothing(data, tmp_path, monkeypatch):
    real = EnsembleTrainer._member_config

    def second_learns_nothing(self, m):  # a zero output layer that never moves: one class everywhere (test_engine)
        config = real(self, m)
        return dataclasses.replace(config, learning_rate=1e-9) if m == 1 else config

    monkeypatch.setattr(EnsembleTrainer, "_member_config", second_learns_nothing)
    out = tmp_path / "e.msd"
    events = list(EnsembleTrainer(data, _config(steps=30), output=out).run())
    finished = _of(events, MemberFinished)
    assert [f.kept for f in finished] == [True, False] and "collapsed" in finished[1].why
    model, meta = load_model(out)
    assert model.n_members == 1 and "collapsed" in meta.provenance["ensemble"]["left_out"]["2"]
    assert [p["seed"] for p in meta.provenance["members"]] == [0]

    monkeypatch.setattr(
        EnsembleTrainer, "_member_config", lambda self, m: dataclasses.replace(real(self, m), learning_rate=1e-9)
    )
    nothing = tmp_path / "none.msd"
    trainer = EnsembleTrainer(data, _config(steps=20), output=nothing)
    events = list(trainer.run())
    assert "no usable member" in events[-1].collapsed and trainer.collapsed == events[-1].collapsed
    assert not _of(events, Saved) and not nothing.exists() and events[-1].path is None


def test_retraining_fine_tunes_every_member_from_its_own_weights(ensemble_file, make_task, tmp_path):
    image, labels, _ = make_task(seed=3, levels=(90, 160))  # another image the parent has not seen
    parent, parent_meta = load_model(ensemble_file)
    out = tmp_path / "child.msd"
    trainer = make_trainer([TrainingData(image, labels, "two")], tiny_config(steps=30), init=ensemble_file, output=out)
    assert isinstance(trainer, EnsembleTrainer) and trainer.n_members == 2
    events = list(trainer.run())
    assert all(s.fine_tuning for s in _of(events, MemberStarted))
    for m in (0, 1):
        assert _inner(events, TrainingStarted, m)[0].fine_tuning
        assert _inner(events, Validated, m)[0].step == 0  # each member's parent is judged first: the bar to beat
    child, meta = load_model(out)
    assert child.n_members == 2 and meta.provenance["fine_tuned_from"]["source"] == str(ensemble_file)
    assert meta.class_names == parent_meta.class_names == ["dark", "bright"]
    assert meta.normalization == parent_meta.normalization
    for m in (0, 1):
        assert not _same(child.members[m], parent.members[m])  # each member learned the new image
    assert [p["seed"] for p in meta.provenance["members"]] == [0, 1]
    assert all("fine_tuned_from" in p for p in meta.provenance["members"])


def test_a_member_whose_retraining_fails_keeps_its_weights(ensemble_file, task, monkeypatch):
    image, labels, _ = task
    parent, meta = load_model(ensemble_file)
    trainer = EnsembleTrainer(
        [TrainingData(image, labels)], tiny_config(steps=15, learning_rate=50.0), init=(parent, meta)
    )
    events = list(trainer.run())  # a learning rate of 50 wrecks every member: each keeps its parent
    assert all(f.kept and f.kept_parent for f in _of(events, MemberFinished))
    finished = events[-1]
    assert finished.kept_parent and trainer.kept_parent and "no member beat" in finished.kept_parent_because
    assert _same(trainer.snapshot(), parent)


def test_a_retraining_keeps_the_members_number(ensemble_file, data):
    with pytest.raises(ValueError, match="keeps the ensemble's 2 members"):
        EnsembleTrainer(data, tiny_config(), 3, init=ensemble_file)
    one, meta = load_model(ensemble_file)
    single = member_metadata(one, meta, 1)
    assert single.arch == "msd" and single.provenance["seed"] == 1 and "metrics" in single.provenance
    assert single.effective_halo == meta.provenance["members"][1]["effective_halo"]
    with pytest.raises(ValueError, match="not an ensemble"):
        EnsembleTrainer(data, tiny_config(), init=(one.members[0], single))
    assert isinstance(make_trainer(data, tiny_config(steps=2)), Trainer)
    assert isinstance(make_trainer(data, tiny_config(steps=2), init=(one.members[0], single)), Trainer)


def test_an_ensemble_trains_in_the_training_process(data):
    from napari_msd.training.remote import TrainingProcess

    process = TrainingProcess()
    try:
        run = process.run(data, _config(steps=30))
        events = list(run)
    finally:
        process.close()
    assert len(_of(events, MemberStarted)) == 2 and isinstance(events[-1], TrainingFinished)
    assert run.step == 30 and run.collapsed is None  # a member's step, unwrapped
    assert run.result is not None and isinstance(run.result.model, Ensemble) and run.result.metadata.arch == "ensemble"
