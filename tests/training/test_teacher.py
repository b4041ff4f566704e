"""The forest teacher: fitted on training strokes only, confident labels on painted planes, targets K..2K-1 in
patches where no stroke is, and a second loss term in the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.base.inputs import InputSpec
from napari_msd.base.normalization import estimate_normalization
from napari_msd.training.engine import TrainConfig, Trainer
from napari_msd.training.sampling import IGNORE, PatchSampler, TrainingData, split
from napari_msd.training.teacher import TrainingStrokes, forest_pseudo_labels, unpainted_planes


@pytest.fixture(scope="module")
def volume(make_task):
    image, labels, truth = make_task(shape=(3, 96, 96))
    labels[0] = 0  # strokes on planes 1 and 2 only
    return image, labels, truth


def test_pseudo_labels_cover_painted_planes_and_agree_with_the_truth(volume):
    image, labels, truth = volume
    ix = split(TrainingData(image, labels), InputSpec(), 0.15, 0)
    pseudo = forest_pseudo_labels([ix], 2, confidence=0.8, threads=1)
    planes = pseudo[id(ix)]
    assert sorted(planes) == [1, 2]  # only planes with training strokes
    for z, taught in planes.items():
        assert taught.shape == (96, 96) and taught.dtype == np.uint8
        assert (taught > 0).mean() > 0.5  # dense: most pixels confident on this easy task
        assert (taught[taught > 0] == truth[z][taught > 0]).mean() > 0.95


def test_extra_planes_are_unpainted_and_evenly_spread():
    assert unpainted_planes(30, [0, 14, 29], 3) == [5, 15, 24]
    assert unpainted_planes(5, [0, 1, 2, 3, 4], 3) == []
    assert unpainted_planes(4, [1], 10) == [0, 2, 3]
    assert unpainted_planes(10, [], 0) == []


def test_the_teacher_also_labels_unpainted_planes_when_asked(volume):
    image, labels, truth = volume
    ix = split(TrainingData(image, labels), InputSpec(), 0.15, 0)
    planes = forest_pseudo_labels([ix], 2, confidence=0.8, threads=1, extra_planes=1)[id(ix)]
    assert sorted(planes) == [0, 1, 2]  # plane 0 carries no stroke
    taught = planes[0]
    assert (taught > 0).mean() > 0.5 and (taught[taught > 0] == truth[0][taught > 0]).mean() > 0.95


def test_a_share_of_patches_comes_from_planes_only_the_teacher_labeled(volume):
    image, labels, _ = volume
    ix = split(TrainingData(image, labels), InputSpec(), 0.15, 0)
    norm = estimate_normalization([image])
    pseudo = {id(ix): {z: np.full((96, 96), 1, np.uint8) for z in (1, 2)} | {0: np.full((96, 96), 2, np.uint8)}}
    sampler = PatchSampler([ix], InputSpec(), (32, 32), 2, norm, seed=1, pseudo=pseudo, unpainted_fraction=0.5)
    assert [z for _, z in sampler.unpainted] == [0]
    _, y = sampler.sample(64)
    from_plane_0 = [(t == 2 + 1).all() for t in y]  # nothing but the teacher's class 2: plane 0
    assert 16 <= sum(from_plane_0) <= 48
    assert not PatchSampler(
        [ix], InputSpec(), (32, 32), 2, norm, pseudo=pseudo, unpainted_fraction=0
    ).unpainted_fraction


def test_the_forest_never_sees_held_out_strokes(volume):
    image, labels, _ = volume
    ix = split(TrainingData(image, labels), InputSpec(), 0.3, 0)
    strokes = TrainingStrokes(ix)
    shown = np.stack([strokes[z] for z in range(3)])
    held = np.zeros(labels.shape, bool)
    for xy in ix.val.values():
        held[tuple(xy.T)] = True
    assert held.any() and not (shown[held] > 0).any()
    assert (shown > 0).sum() == sum(len(v) for v in ix.train.values())
    with pytest.raises(IndexError, match="one plane at a time"):
        strokes[0:2]


def test_sampler_adds_teacher_targets_only_where_no_stroke_is(volume):
    image, labels, _ = volume
    ix = split(TrainingData(image, labels), InputSpec(), 0.15, 0)
    norm = estimate_normalization([image])
    pseudo = {id(ix): {z: np.full((96, 96), 2, np.uint8) for z in (1, 2)}}
    plain = PatchSampler([ix], InputSpec(), (32, 32), 2, norm, seed=4)
    taught = PatchSampler([ix], InputSpec(), (32, 32), 2, norm, seed=4, pseudo=pseudo)
    (_, y0), (_, y1) = plain.sample(8), taught.sample(8)
    strokes = y0 != IGNORE
    assert np.array_equal(y1[strokes], y0[strokes])  # strokes keep their targets 0..K-1
    assert (y1[~strokes] == 2 + 1).all()  # the teacher's class 2 is target K + 1 everywhere else


def test_engine_trains_with_the_teacher_and_records_it(volume, monkeypatch):
    image, labels, _ = volume
    seen = []
    real = torch.nn.functional.cross_entropy

    def spy(logits, target, *args, **kwargs):
        seen.append(int((target != IGNORE).sum()))
        return real(logits, target, *args, **kwargs)

    config = TrainConfig(
        model={"depth": 6},
        patch_size=32,
        batch_size=4,
        steps=4,
        validate_every=2,
        threads=1,
        teacher_weight=0.5,
        edge_weight=0,
    )
    trainer = Trainer([TrainingData(image, labels)], config)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    events = list(trainer.run())
    assert trainer.teacher_active and events[-1].steps == 4
    assert trainer.metadata().provenance["teacher"] == {
        "kind": "random forest",
        "weight": 0.5,
        "confidence": 0.8,
        "unpainted_planes": 0,
    }
    assert max(seen) > 4 * 32 * 32 * 0.5  # the teacher's term covers most of each batch's pixels


def test_teacher_is_on_by_default_off_at_weight_0_and_in_3d(volume):
    image, labels, _ = volume
    base = {"model": {"depth": 4}, "patch_size": 32, "batch_size": 2, "steps": 1, "threads": 1}
    trainer = Trainer([TrainingData(image, labels)], TrainConfig(**base))
    list(trainer.run())
    assert trainer.teacher_active and trainer.metadata().provenance["teacher"]["weight"] == 1.0
    trainer = Trainer([TrainingData(image, labels)], TrainConfig(**base, teacher_weight=0.0))
    list(trainer.run())
    assert not trainer.teacher_active and "teacher" not in trainer.metadata().provenance
    trainer = Trainer(
        [TrainingData(image, labels)],
        TrainConfig(**{**base, "patch_size": 3}, teacher_weight=1.0, input=InputSpec(mode="3d")),
    )
    list(trainer.run())
    assert not trainer.teacher_active


@pytest.mark.parametrize("kwargs", [{"teacher_weight": -1}, {"teacher_confidence": 0}, {"teacher_confidence": 1.5}])
def test_bad_teacher_settings_are_one_line(kwargs):
    with pytest.raises(ValueError, match="the teacher needs") as err:
        TrainConfig(**kwargs).check()
    assert "\n" not in str(err.value)


def test_the_forest_can_learn_from_some_labels_and_teach_the_planes_of_all(volume):
    """A retraining's teacher can stay the forest of the earlier labels: corrections sit on the pixels a forest
    gets wrong, and learning them made its labels worse everywhere (ISBI 2012: 0.529 -> 0.317 membrane IoU)."""
    image, labels, truth = volume
    earlier, new = labels.copy(), np.zeros_like(labels)
    earlier[2] = 0
    new[2] = np.where(labels[2] > 0, 3 - labels[2], 0)  # labels that contradict the image: a poisoned forest
    spec = InputSpec()
    ix_new, ix_earlier = (
        split(TrainingData(image, new), spec, 0.15, 0),
        split(TrainingData(image, earlier), spec, 0.15, 1),
    )
    both = forest_pseudo_labels([ix_new, ix_earlier], 2, confidence=0.8, threads=1)
    kept = forest_pseudo_labels([ix_new, ix_earlier], 2, confidence=0.8, threads=1, fit_on=[ix_earlier])
    assert sorted(kept[id(ix_new)]) == [2] and sorted(kept[id(ix_earlier)]) == [1]

    def agreement(planes, z):
        taught = planes[z]
        return (taught[taught > 0] == truth[z][taught > 0]).mean()

    assert agreement(kept[id(ix_new)], 2) > 0.95 and agreement(kept[id(ix_earlier)], 1) > 0.95
    assert agreement(both[id(ix_new)], 2) < agreement(kept[id(ix_new)], 2)


@pytest.mark.parametrize("refit", [True, False])
def test_a_retraining_fits_its_teacher_on_the_earlier_labels_unless_told_to_refit(volume, monkeypatch, refit):
    assert not TrainConfig.teacher_refit  # the default
    from napari_msd.training import engine

    image, labels, _ = volume
    parent = Trainer([TrainingData(image, labels)], TrainConfig(steps=2, validate_every=100, model={"depth": 4}))
    list(parent.run())
    base = (parent.snapshot(), parent.metadata())
    seen = {}
    real = engine.forest_pseudo_labels
    monkeypatch.setattr(
        engine,
        "forest_pseudo_labels",
        lambda *a, **k: seen.setdefault("fit_on", k.get("fit_on")) and False or real(*a, **k),
    )
    new = np.where(labels == 2, labels, 0)
    trainer = Trainer(
        [TrainingData(image, new, "new")],
        TrainConfig(steps=1, validate_every=100, teacher_refit=refit),
        init=base,
        replay=[TrainingData(image, labels, "earlier")],
    )
    list(trainer.run())
    assert trainer.teacher_active
    assert seen["fit_on"] is None if refit else seen["fit_on"] == trainer.replay_indices
