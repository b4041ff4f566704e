"""Deep supervision: MUNet trains on every scale's output and the fused one; other networks on their one output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_msd.models import MUNet, UNet
from napari_msd.training import deep_supervision
from napari_msd.training.engine import Trainer
from napari_msd.training.events import TrainStep
from napari_msd.training.losses import SparseLoss
from napari_msd.training.sampling import IGNORE

from helpers.training import tiny_config

MUNET = {"arch": "munet", "model": {"depth": 2, "base_channels": 4, "fusion_radius": 8}, "learning_rate": 3e-3}
GATED = {"arch": "gated_unet", "model": {"depth": 2, "base_channels": 4, "squeeze_radius": 8}, "learning_rate": 3e-3}


def test_outputs_are_every_scale_and_the_fused_logits_for_munet_only():
    x = torch.randn(2, 1, 20, 20)
    munet = MUNet(1, 3, depth=3, base_channels=4, fusion_radius=4)
    fused, scales = deep_supervision.outputs(munet, x)
    assert len(scales) == 3 and all(s.shape == fused.shape == (2, 3, 20, 20) for s in scales)
    torch.testing.assert_close(fused, munet(x))
    unet = UNet(1, 3, depth=2, base_channels=4)
    logits, none = deep_supervision.outputs(unet, x)
    assert none == [] and logits.shape == (2, 3, 20, 20)


def test_the_loss_is_the_mean_over_the_scales_and_the_fused_output():
    torch.manual_seed(0)
    loss_fn = SparseLoss(3, dice_weight=1.0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE  # unlabeled pixels count nowhere
    fused, scales = torch.randn(2, 3, 8, 8), [torch.randn(2, 3, 8, 8) for _ in range(3)]
    expected = sum(loss_fn(z, target) for z in [fused, *scales]) / 4
    torch.testing.assert_close(deep_supervision.supervised(loss_fn, fused, scales, target), expected)
    assert deep_supervision.supervised(loss_fn, fused, [], target) == loss_fn(fused, target)


def test_the_dice_term_defaults_to_the_networks_own_weight(data):
    def dice(**overrides):
        return Trainer(data, tiny_config(steps=1, **overrides)).loss_fn.dice_weight

    assert dice(**MUNET) == MUNet.dice_weight == 1.0  # the paper trains its masks with Dice
    assert dice(**MUNET, dice_weight=0.0) == 0.0  # asked for: off
    assert dice(**GATED) == 0.0 and dice(arch="unet", model={"depth": 2, "base_channels": 4}) == 0.0
    assert dice(**GATED, dice_weight=0.5) == 0.5


@pytest.mark.parametrize("arch", [MUNET, GATED], ids=["munet", "gated_unet"])
def test_a_few_steps_through_the_engine_reduce_the_loss(arch, data, task, predict, monkeypatch):
    trainer = Trainer(data, tiny_config(**arch))
    calls = []
    loss_fn = trainer.loss_fn
    monkeypatch.setattr(
        trainer, "loss_fn", lambda logits, target: calls.append(logits.shape) or loss_fn(logits, target)
    )
    events = list(trainer.run())
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == 30 and all(math.isfinite(s.loss) for s in steps)
    assert np.mean([s.loss for s in steps[-5:]]) < np.mean([s.loss for s in steps[:5]])
    per_step = 3 if arch is MUNET else 1  # MUNet: two scales and the fused output
    assert len(calls) == 30 * per_step and len(set(calls)) == 1  # every output at the patch's full size
    image, _, truth = task
    pred = predict(trainer.snapshot(), trainer.normalization, image)
    assert (pred == truth).mean() >= 0.75
