"""Class-prior correction: the EM estimate and the output-bias shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.models import MSDNet, UNet
from napari_msd.training.prior import erased_classes, estimate_prior, output_bias, safe_scale, shift_output_bias


def _small_config(**changes):
    """A few steps of a 5-layer MS-D on 32 px patches, one thread, no halo measurement."""
    from napari_msd.training.engine import TrainConfig

    return TrainConfig(model={"depth": 5}, patch_size=32, batch_size=4, measure_halo=False, threads=1, **changes)


def _calibrated_posteriors(true_prior: np.ndarray, train_prior: np.ndarray, n: int = 200_000, seed: int = 0):
    """Pixels drawn with ``true_prior`` from two overlapping Gaussians, scored by the Bayes posterior under
    ``train_prior``: exactly what a calibrated network trained on balanced strokes outputs."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(2, size=n, p=true_prior)
    x = rng.normal(np.where(classes == 0, -1.0, 1.0), 1.0)
    likelihood = np.stack([np.exp(-0.5 * (x + 1) ** 2), np.exp(-0.5 * (x - 1) ** 2)])
    posterior = likelihood * train_prior[:, None]
    return posterior / posterior.sum(0)


def test_em_recovers_the_image_prior_from_balanced_training():
    train = np.array([0.5, 0.5])
    for true in (np.array([0.22, 0.78]), np.array([0.5, 0.5]), np.array([0.7, 0.3])):
        estimate = estimate_prior(_calibrated_posteriors(true, train), train)
        assert estimate == pytest.approx(true, abs=0.02)


@pytest.mark.parametrize("model", [MSDNet(1, 3, depth=3), UNet(1, 3, depth=2, base_channels=4).eval()])
def test_bias_shift_turns_posteriors_into_the_new_prior(model):
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        output_bias(model).normal_()
        before = torch.softmax(model(x), 1)
    prior, train = np.array([0.2, 0.3, 0.5]), np.full(3, 1 / 3)
    shift = shift_output_bias(model, prior, train)
    assert shift == pytest.approx(np.log(prior / train))
    with torch.no_grad():
        after = torch.softmax(model(x), 1)
    expected = before * torch.as_tensor(prior / train, dtype=before.dtype)[None, :, None, None]
    assert torch.allclose(after, expected / expected.sum(1, keepdim=True), atol=1e-5)


def test_a_class_never_becomes_impossible():
    model = MSDNet(1, 2, depth=2)
    shift = shift_output_bias(model, np.array([0.0, 1.0]), np.array([0.5, 0.5]))
    assert np.isfinite(shift).all()


def test_engine_applies_and_records_the_prior(make_task, accept_any_network):
    from napari_msd.training.engine import Trainer
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    data = [TrainingData(image, strokes, "checkerboard")]

    config = _small_config(steps=10, validate_every=5, prior_correction=True)
    trainer = Trainer(data, config)
    for _ in trainer.run():
        pass
    prior = trainer.metadata().provenance["class_prior"]
    assert set(prior) == {"class 1", "class 2"} and sum(prior.values()) == pytest.approx(1.0)
    assert trainer.class_prior == list(prior.values())


def test_engine_undoes_a_prior_that_costs_the_held_out_strokes(make_task, monkeypatch):
    from napari_msd.training import engine as engine_module
    from napari_msd.training import prior as prior_module
    from napari_msd.training.engine import Trainer
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    config = _small_config(steps=30, validate_every=10, prior_correction=False, teacher_weight=0.0)  # by hand below
    trainer = Trainer([TrainingData(image, strokes, "checkerboard")], config)
    for _ in trainer.run():
        pass
    assert trainer.val_tiles
    bias = output_bias(trainer.model).detach().clone()
    monkeypatch.setattr(engine_module, "estimate_prior", lambda p, train: np.array([1e-4, 1 - 1e-4]))
    monkeypatch.setattr(prior_module, "ERASE_KEEP", 0.0)  # the erasure guard aside: these rules come after it
    assert trainer.correct_prior(max_loss=0.02) is None and trainer.class_prior is None
    assert trainer.prior_refused.startswith(("it would cost more than 2%", "the corrected network would be collapsed"))
    assert torch.allclose(output_bias(trainer.model), bias, atol=1e-6)
    # without a bound on the class accuracy (the default), a collapsed result (class 1 never predicted) undoes it
    assert trainer.correct_prior() is None and trainer.class_prior is None
    assert trainer.prior_refused.startswith("the corrected network would be collapsed")
    assert torch.allclose(output_bias(trainer.model), bias, atol=1e-6)
    assert "class_prior" not in trainer.metadata().provenance


def test_undo_prior_shift_takes_back_the_recorded_correction():
    from napari_msd.training.prior import undo_prior_shift

    model = MSDNet(1, 2, depth=3)
    before = output_bias(model).detach().clone()
    prior = np.array([0.2, 0.8])
    shift_output_bias(model, prior, np.array([0.5, 0.5]))
    removed = undo_prior_shift(model, {"class_prior": {"a": 0.2, "b": 0.8}}, ["a", "b"])
    np.testing.assert_allclose(removed, np.log(prior / 0.5))
    torch.testing.assert_close(output_bias(model).detach(), before)
    assert undo_prior_shift(model, {}, ["a", "b"]) is None  # a model saved without the correction
    assert undo_prior_shift(model, {"class_prior": {"x": 1.0}}, ["a", "b"]) is None  # other class names


def test_fine_tuning_starts_without_the_parents_prior_and_a_kept_parent_keeps_it(
    make_task, tmp_path, monkeypatch, accept_any_network
):
    """A retrained model is corrected once, not twice; a retraining that keeps the parent saves it unchanged."""
    from napari_msd.io.model_file import load_model
    from napari_msd.training import engine
    from napari_msd.training.engine import Trainer
    from napari_msd.training.prior import output_bias
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    data = [TrainingData(image, strokes, "checkerboard")]
    config = _small_config(steps=10, validate_every=5, teacher_weight=0.0)
    parent_path = tmp_path / "parent.msd"
    list(Trainer(data, config, output=parent_path).run())
    parent, meta = load_model(parent_path)
    recorded = meta.provenance["class_prior"]
    shift = np.log(np.maximum([recorded[n] for n in meta.class_names], 1e-3) * 2)
    child = Trainer(data, config, init=parent_path)
    np.testing.assert_allclose(child.parent_prior_undone, shift)
    torch.testing.assert_close(
        output_bias(child.model).detach(), output_bias(parent).detach() - torch.as_tensor(shift, dtype=torch.float32)
    )
    # a retraining that never beats the parent: the parent's weights, its prior shift back on, are the result
    monkeypatch.setattr(engine, "FORGET_TOLERANCE", -1.0)  # every fine-tuned validation counts as forgetting
    kept = Trainer(data, config, init=parent_path, replay=data, output=tmp_path / "kept.msd")
    finished = list(kept.run())[-1]
    assert finished.kept_parent
    saved, saved_meta = load_model(tmp_path / "kept.msd")
    torch.testing.assert_close(output_bias(saved).detach(), output_bias(parent).detach())
    assert saved_meta.provenance["class_prior"] == pytest.approx(recorded)


def test_a_shift_that_all_but_erases_a_painted_class_is_named():
    from napari_msd.training.prior import erased_classes

    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=20_000, p=[0.6, 0.3, 0.1])
    p = np.full((3, labels.size), 0.15)
    p[labels, np.arange(labels.size)] = 0.7  # class 3 predicted on 10% of the pixels, with probability 0.7
    assert erased_classes(p, np.zeros(3), [1, 2, 3]) == []
    halved = np.log([1.0, 1.0, 0.2])  # 0.7 * 0.2 < 0.15: class 3 disappears
    assert erased_classes(p, halved, [1, 2, 3]) == [3]
    assert erased_classes(p, halved, [1, 2]) == []  # an unpainted class may vanish
    mild = np.log([1.0, 1.0, 0.5])  # 0.35 > 0.15: class 3 kept
    assert erased_classes(p, mild, [1, 2, 3]) == []
    rare = p.copy()
    rare[:, labels == 2] = [[0.7], [0.15], [0.15]]  # class 3 never predicted before: nothing to erase
    assert erased_classes(rare, halved, [1, 2, 3]) == []


def test_the_largest_safe_tenth_of_a_shift_is_found():
    from napari_msd.training.prior import safe_scale

    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=20_000, p=[0.6, 0.3, 0.1])
    p = np.full((3, labels.size), 0.15)
    p[labels, np.arange(labels.size)] = 0.7
    assert safe_scale(p, np.log([1.0, 1.0, 0.5]), [1, 2, 3]) == 1.0  # erases nothing: all of it
    # 0.7 * 0.01 ** t stays above 0.15 for t < 0.334: three tenths of the shift keep class 3
    assert safe_scale(p, np.log([1.0, 1.0, 0.01]), [1, 2, 3]) == pytest.approx(0.3)
    assert safe_scale(p, np.log([1.0, 1.0, 0.01]), [1, 2]) == 1.0  # an unpainted class may vanish
    close = np.full((3, labels.size), 0.32)
    close[labels, np.arange(labels.size)] = 0.36  # a margin of log(0.36 / 0.32) = 0.12 for every pixel
    assert safe_scale(close, np.array([0.0, 0.0, -50.0]), [1, 2, 3]) == 0.0  # even a tenth erases class 3


def test_a_scaled_prior_is_taken_back_exactly_by_undo():
    from napari_msd.training.prior import scaled_prior, undo_prior_shift

    model, train = MSDNet(1, 3, depth=3), np.full(3, 1 / 3)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        before = torch.softmax(model(x), 1)
    shift = 0.4 * shift_output_bias(model, np.array([0.05, 0.15, 0.8]), train)
    with torch.no_grad():
        output_bias(model).sub_(torch.as_tensor(shift / 0.4 * 0.6, dtype=torch.float32))  # 0.4 of it kept
    prior = scaled_prior(shift, train)
    assert prior.sum() == pytest.approx(1.0) and prior[2] > prior[1] > prior[0]
    undo_prior_shift(model, {"class_prior": dict(zip("abc", prior))}, list("abc"))
    with torch.no_grad():
        assert torch.allclose(torch.softmax(model(x), 1), before, atol=1e-5)


def _prior_run(make_task, monkeypatch, scale: float, prior=(1 - 1e-4, 1e-4)):
    """A short training whose class-prior estimate ``prior`` the erasure guard finds would all but erase painted
    class 2, with ``safe_scale`` answering ``scale``: the trainer, its last TrainingFinished, the shift estimated
    and the output bias just before the correction."""
    from napari_msd.training import engine as engine_module
    from napari_msd.training.engine import Trainer
    from napari_msd.training.events import TrainingFinished
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    config = _small_config(steps=30, validate_every=10, teacher_weight=0.0)
    monkeypatch.setattr(engine_module, "estimate_prior", lambda p, train: np.array(prior))
    monkeypatch.setattr(engine_module, "erased_classes", lambda p, shift, painted: [2])
    monkeypatch.setattr(engine_module, "safe_scale", lambda p, shift, painted: scale)
    before = []
    real_shift = engine_module.shift_output_bias

    def shift_output_bias(model, *args):
        before.append(output_bias(model).detach().clone())
        return real_shift(model, *args)

    monkeypatch.setattr(engine_module, "shift_output_bias", shift_output_bias)
    trainer = Trainer([TrainingData(image, strokes, "checkerboard")], config)
    finished = [e for e in trainer.run() if isinstance(e, TrainingFinished)][-1]
    assert len(before) == 1
    return trainer, finished, np.log(np.maximum(prior, 1e-3) / 0.5), before[0]


def _centred(t: torch.Tensor) -> np.ndarray:
    return (t - t.mean()).numpy()  # logits up to a constant, to which softmax is blind


def test_engine_refuses_a_prior_of_which_no_tenth_is_safe_and_says_so(make_task, monkeypatch):
    trainer, finished, _, before = _prior_run(make_task, monkeypatch, 0.0)
    reason = "it would all but erase class 2, which is painted, from the prediction"
    assert trainer.class_prior is None and trainer.prior_refused == reason and trainer.prior_scale == 0
    assert finished.note == f"the class-prior correction was not applied: {reason}"
    provenance = trainer.metadata().provenance
    assert "class_prior" not in provenance and provenance["class_prior_refused"] == reason
    torch.testing.assert_close(output_bias(trainer.model).detach(), before)  # the refused shift was taken back


def test_engine_applies_the_safe_share_of_a_prior_and_retrain_takes_it_back(make_task, monkeypatch, accept_any_network):
    from napari_msd.training.prior import scaled_prior, undo_prior_shift

    trainer, finished, shift, before = _prior_run(make_task, monkeypatch, 0.3, prior=(0.7, 0.3))
    assert trainer.prior_refused is None and trainer.prior_scale == pytest.approx(0.3)
    assert finished.note == (
        "the class-prior correction was applied at 30%: "
        "the full correction would all but erase class 2, which is painted"
    )
    model = trainer.snapshot()
    applied = output_bias(model).detach() - before
    np.testing.assert_allclose(_centred(applied), 0.3 * (shift - shift.mean()), atol=1e-5)
    provenance = trainer.metadata().provenance
    assert provenance["class_prior_scale"] == pytest.approx(0.3)
    recorded = provenance["class_prior"]
    assert list(recorded.values()) == pytest.approx(scaled_prior(0.3 * shift, np.full(2, 0.5)))
    assert trainer.class_prior == list(recorded.values())
    undo_prior_shift(model, provenance, list(recorded))  # what Retrain does first: back to the network as trained
    np.testing.assert_allclose(_centred(output_bias(model).detach()), _centred(before), atol=1e-5)


def test_a_partial_prior_that_costs_too_much_is_taken_back_whole(make_task, monkeypatch, accept_any_network):
    from napari_msd.training import engine as engine_module
    from napari_msd.training.engine import Trainer
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    config = _small_config(steps=30, validate_every=10, prior_correction=False, teacher_weight=0.0)
    trainer = Trainer([TrainingData(image, strokes, "checkerboard")], config)
    for _ in trainer.run():
        pass
    monkeypatch.setattr(engine_module, "estimate_prior", lambda p, train: np.array([0.7, 0.3]))
    monkeypatch.setattr(engine_module, "erased_classes", lambda p, shift, painted: [2])
    monkeypatch.setattr(engine_module, "safe_scale", lambda p, shift, painted: 0.3)
    before = output_bias(trainer.model).detach().clone()
    assert trainer.correct_prior(max_loss=-1.0) is None  # any class accuracy is too costly
    assert trainer.prior_refused == "it would cost more than -100% class accuracy on the held-out labels"
    assert trainer.class_prior is None and trainer.prior_scale == 0 and trainer.prior_scaled is None
    torch.testing.assert_close(output_bias(trainer.model).detach(), before)  # 0.3 of the shift taken back


def test_the_real_guard_scales_or_refuses_a_prior_that_would_erase_a_painted_class(make_task, monkeypatch):
    from napari_msd.training import engine as engine_module
    from napari_msd.training.engine import Trainer
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    config = _small_config(steps=30, validate_every=10, prior_correction=False, teacher_weight=0.0)
    trainer = Trainer([TrainingData(image, strokes, "checkerboard")], config)
    for _ in trainer.run():
        pass
    monkeypatch.setattr(engine_module, "estimate_prior", lambda p, train: np.array([1 - 1e-4, 1e-4]))
    probs = np.concatenate(trainer._window_probabilities(), axis=1)  # the windows correct_prior judges on
    full = np.log(np.array([1 - 1e-4, 1e-3]) / 0.5)
    assert erased_classes(probs, full, [1, 2]) == [2]  # class 2's logits lowered by 6.2 erase it
    trainer.correct_prior()
    if trainer.prior_refused is None:
        assert 0 < trainer.prior_scale < 1 and trainer.prior_scale == safe_scale(probs, full, [1, 2])
        assert "class 2, which is painted" in trainer.prior_scaled
    else:
        assert trainer.prior_scale == 0 and safe_scale(probs, full, [1, 2]) == 0 or "collapsed" in trainer.prior_refused
