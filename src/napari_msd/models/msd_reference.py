"""Plain-autograd MS-D: the executable specification the fast network is checked against.

Every layer concatenates all earlier maps with ``torch.cat`` and runs one dilated
``conv2d``/``conv3d`` per channel, exactly as the paper's equations read. It is
slow and keeps O(depth^2) maps for backward; tests compare outputs and gradients
of :class:`~napari_msd.models.msd.MSDNet` with it, and the benchmarks use it as
the naive baseline. It shares the parameters of the ``MSDNet`` it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .msd import MSDNet
from .padding import reflect_pad


def reference_forward(net: MSDNet, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``net`` for ``x``, computed layer by layer with concatenation and autograd."""
    conv = F.conv2d if net.ndim == 2 else F.conv3d
    maps = [x]
    for i, weight in enumerate(net.weights):
        previous = torch.cat(maps, dim=1)
        layer = []
        for j in range(net.width):
            dilation = net.schedule[i][j]
            padded = reflect_pad(previous, dilation, net.ndim)
            k = i * net.width + j
            out = conv(padded, weight[j : j + 1], net.bias[k : k + 1], dilation=dilation)
            layer.append(F.relu(out))
        maps.append(torch.cat(layer, dim=1))
    everything = torch.cat(maps, dim=1)
    head = net.head_weight.reshape(*net.head_weight.shape, *([1] * net.ndim))
    return conv(everything, head, net.head_bias)
