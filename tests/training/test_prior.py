"""Class-prior correction: the EM estimate and the output-bias shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.models import MSDNet, UNet
from napari_msd.training.prior import estimate_prior, output_bias, shift_output_bias


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
    from napari_msd.training.engine import TrainConfig, Trainer
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    data = [TrainingData(image, strokes, "checkerboard")]

    config = TrainConfig(model={"depth": 5}, steps=10, patch_size=32, batch_size=4, prior_correction=True,
                         measure_halo=False, threads=1, validate_every=5)
    trainer = Trainer(data, config)
    for _ in trainer.run():
        pass
    prior = trainer.metadata().provenance["class_prior"]
    assert set(prior) == {"class 1", "class 2"} and sum(prior.values()) == pytest.approx(1.0)
    assert trainer.class_prior == list(prior.values())


def test_engine_undoes_a_prior_that_costs_the_held_out_strokes(make_task, monkeypatch):
    from napari_msd.training import engine as engine_module
    from napari_msd.training.engine import TrainConfig, Trainer
    from napari_msd.training.sampling import TrainingData

    image, strokes, _ = make_task()
    config = TrainConfig(model={"depth": 5}, steps=30, patch_size=32, batch_size=4, measure_halo=False, threads=1,
                         validate_every=10, prior_correction=False, teacher_weight=0.0)  # applied by hand below
    trainer = Trainer([TrainingData(image, strokes, "checkerboard")], config)
    for _ in trainer.run():
        pass
    assert trainer.val_tiles
    bias = output_bias(trainer.model).detach().clone()
    monkeypatch.setattr(engine_module, "estimate_prior", lambda p, train: np.array([1e-4, 1 - 1e-4]))
    assert trainer.correct_prior(max_loss=0.02) is None and trainer.class_prior is None
    assert torch.allclose(output_bias(trainer.model), bias, atol=1e-6)
    # without a bound on the class accuracy (the default), a collapsed result (class 1 never predicted) undoes it
    assert trainer.correct_prior() is None and trainer.class_prior is None
    assert torch.allclose(output_bias(trainer.model), bias, atol=1e-6)
    assert "class_prior" not in trainer.metadata().provenance
