"""Test-time flips: class probabilities averaged over a network's answers on mirrored copies of its input.

A network trained with flip augmentation should answer the same on a mirrored image; where its answers differ, their
mean is usually the better one (nnU-Net mirrors at inference by default). It costs one forward pass per mirror:
4 for 2D networks (none, y, x, both), 8 for 3D ones. Networks trained here with flip augmentation gained nothing
from it on ISBI 2012 or the VNC volume (README), so prediction does not mirror; the stroke benchmark scores it
(``benchmarks/stroke_benchmark.py --flips``).
"""

from __future__ import annotations

import itertools

import torch


def mirror_axes(spatial: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial dimensions of an ``(N, C, *spatial)`` tensor, the empty one first."""
    dims = range(2, 2 + spatial)
    return [axes for k in range(spatial + 1) for axes in itertools.combinations(dims, k)]


def flip_averaged(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean softmax ``(N, K, *spatial)`` of ``model`` over every mirror of ``x`` (``(N, C, *spatial)``), each answer
    mirrored back before it is added."""
    total: torch.Tensor | None = None
    mirrors = mirror_axes(x.ndim - 2)
    for axes in mirrors:
        logits = model(torch.flip(x, axes) if axes else x).float()
        p = torch.softmax(logits, dim=1)
        p = torch.flip(p, axes) if axes else p
        total = p if total is None else total.add_(p)
    assert total is not None  # mirrors always holds the identity
    return total.div_(len(mirrors))
