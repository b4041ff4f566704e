"""A tiny saved MS-D and a volume it splits into both classes, for batch prediction tests (core and CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_msd.io import save_model
from napari_msd.models import MSDNet

from helpers.networks import image

CLASSES = ["membrane", "cell interior"]
NORMALIZATION = {"method": "percentile", "low": 0.0, "high": 255.0, "percentiles": [1, 99]}
INPUT_2D = {"mode": "2d", "slices": 1, "orientations": ["xy"]}
SHAPE = (5, 96, 80)


def make_model(path: Path, seed: int = 0) -> Path:
    """A tiny "trained-ish" MS-D network, saved: random head and biases (its output depends on every layer),
    scaled and biased so that both classes cover large parts of :func:`make_volume`."""
    torch.manual_seed(seed)
    net = MSDNet(1, 2, depth=6)
    with torch.no_grad():
        for p in (net.bias, net.head_weight):
            p.normal_(0.0, 0.5)
        net.head_bias.zero_()
        x = torch.from_numpy(make_volume()[:, None].astype(np.float32) / 255.0)
        margin = net.eval()(x)[:, 0] - net(x)[:, 1]
        net.head_weight *= 3.0 / float(margin.std())  # class margins of a few units, as after training
        net.head_bias[0] = -float(margin.median()) * 3.0 / float(margin.std())
    return save_model(
        path,
        net,
        class_names=list(CLASSES),
        normalization=dict(NORMALIZATION),
        input_spec=dict(INPUT_2D),
        effective_halo=None,
    )


def make_volume(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """Smooth blobs plus noise, uint8."""
    return image(shape, seed)
