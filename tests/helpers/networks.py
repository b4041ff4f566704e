"""Small networks, metadata and images shared by the inference tests (imported by the test modules)."""

from __future__ import annotations

import numpy as np
import torch

from napari_msd.base.inputs import InputSpec
from napari_msd.base.normalization import Normalization
from napari_msd.io.model_file import ModelMetadata
from napari_msd.models import MSDNet, UNet

NORM = Normalization(20.0, 230.0)


def msd(in_channels=1, ndim=2, depth=6, dilations=(1, 2, 3), seed=0) -> MSDNet:
    """A tiny MS-D network with random head and biases, so its output depends on every layer."""
    torch.manual_seed(seed)
    net = MSDNet(in_channels, 3, depth=depth, ndim=ndim, dilations=dilations)
    with torch.no_grad():
        for p in (net.bias, net.head_weight, net.head_bias):
            p.normal_(0.0, 0.5)
    return net.eval()


def unet(seed=0) -> UNet:
    """A tiny U-Net in eval mode with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    net = UNet(1, 3, ndim=2, depth=2, base_channels=4)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return net.eval()


def metadata(net, spec=None, effective_halo=None) -> ModelMetadata:
    spec = InputSpec() if spec is None else spec
    return ModelMetadata(
        arch=net.arch,
        config=net.config(),
        class_names=["a", "b", "c"],
        receptive_field=int(net.receptive_field),
        normalization=NORM.to_dict(),
        effective_halo=effective_halo,
        input=spec.to_dict(),
    )


def image(shape, seed=0) -> np.ndarray:
    """Blobs plus noise, uint8."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    smooth = sum(np.sin(g / (3.0 + i) + rng.uniform(0, 6)) for i, g in enumerate(grids))
    return np.clip(128 + 40 * smooth + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
