"""Edge-aware Potts loss: a local CRF term on every pixel of a patch, painted or not.

Strokes leave most pixels unlabeled, and between a membrane stroke and a cell-interior stroke a
network is free to put the class boundary anywhere. The regularised-loss approach to scribble
supervision (Tang et al., ECCV 2018; the local "gated CRF" form of Obukhov et al., 2019) adds

    mean over pixels i and neighbours j:  w_ij * (1 - p_i . p_j),   w_ij = exp(-|I_i - I_j|^2 / 2 s_I^2 - |i - j|^2 / 2 s_xy^2)

with ``p`` the softmax probabilities and ``I`` the (normalised) image. Disagreeing neighbours cost
much where the image is flat and little across an intensity edge, so boundaries in unlabeled
regions move to image edges. Each neighbour pair is counted once (offsets in one half-space).
"""

from __future__ import annotations

import itertools
import math

import torch


def half_offsets(ndim: int, radius: int) -> list[tuple[int, ...]]:
    """Offsets within ``radius`` (Euclidean) in one half-space, so each unordered pair appears once."""
    out = []
    for d in itertools.product(range(-radius, radius + 1), repeat=ndim):
        if any(d) and sum(v * v for v in d) <= radius * radius and d > tuple([0] * ndim):
            out.append(d)
    return out


def _pair(t: torch.Tensor, offset: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of ``t`` (..., *spatial) at positions ``i`` and ``i + offset`` over the overlap."""
    ndim = len(offset)
    a, b = [slice(None)] * t.dim(), [slice(None)] * t.dim()
    for axis, d in zip(range(t.dim() - ndim, t.dim()), offset, strict=True):
        n = t.shape[axis]
        a[axis] = slice(max(0, -d), n - max(0, d))
        b[axis] = slice(max(0, d), n - max(0, -d))
    return t[tuple(a)], t[tuple(b)]


class EdgePotts(torch.nn.Module):
    """``weight * mean_ij w_ij (1 - p_i . p_j)`` over the patch; see the module docstring.

    ``sigma_intensity`` is in units of the normalised image (percentiles 1-99 map to 0-1);
    ``radius`` and ``sigma_space`` in pixels. The guide image is the centre input channel.
    """

    def __init__(self, weight: float = 1.0, radius: int = 3, sigma_intensity: float = 0.1, sigma_space: float = 3.0):
        super().__init__()
        if weight < 0 or radius < 1 or sigma_intensity <= 0 or sigma_space <= 0:
            raise ValueError("the edge-aware loss needs weight >= 0, radius >= 1 and positive sigmas")
        self.weight, self.radius = float(weight), int(radius)
        self.sigma_intensity, self.sigma_space = float(sigma_intensity), float(sigma_space)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        ndim = logits.dim() - 2
        probs = logits.float().softmax(dim=1)
        guide = image[:, image.shape[1] // 2].detach().float()
        total, count = probs.new_zeros(()), 0.0
        for offset in half_offsets(ndim, self.radius):
            g0, g1 = _pair(guide, offset)
            p0, p1 = _pair(probs, offset)
            spatial = math.exp(-sum(v * v for v in offset) / (2 * self.sigma_space ** 2))
            w = spatial * torch.exp(-(g0 - g1).square() / (2 * self.sigma_intensity ** 2))
            total = total + (w * (1 - (p0 * p1).sum(dim=1))).sum()
            count += g0.numel()
        return self.weight * total / max(count, 1.0)
