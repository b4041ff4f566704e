"""Edge-aware Potts loss: a local CRF term on every pixel of a patch, painted or not.

Strokes leave most pixels unlabeled, and between a membrane stroke and a cell-interior stroke a
network is free to put the class boundary anywhere. The regularised-loss approach to scribble
supervision (Tang et al., ECCV 2018; the local "gated CRF" form of Obukhov et al., 2019) adds

    mean over pixels i and neighbours j:  w_ij * (1 - p_i . p_j),
    w_ij = exp(-|I_i - I_j|^2 / 2 s_I^2 - |i - j|^2 / 2 s_xy^2)

with ``p`` the softmax probabilities and ``I`` the (normalised) image. Disagreeing neighbours cost
much where the image is flat and little across an intensity edge, so boundaries in unlabeled
regions move to image edges. Each neighbour pair is counted once (offsets in one half-space).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch


@functools.cache
def half_offsets(ndim: int, radius: int) -> tuple[tuple[int, ...], ...]:
    """Offsets within ``radius`` (Euclidean) in one half-space, so each unordered pair appears once."""
    return tuple(
        d
        for d in itertools.product(range(-radius, radius + 1), repeat=ndim)
        if any(d) and sum(v * v for v in d) <= radius * radius and d > (0,) * ndim
    )


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
    ``radius`` and ``sigma_space`` in pixels; by default the radius is 3 in 2D and 2 in 3D (16 neighbours
    per voxel instead of 61). The guide image is input channel ``guide`` (default: the centre one).
    """

    def __init__(
        self,
        weight: float = 1.0,
        radius: int | None = None,
        sigma_intensity: float = 0.1,
        sigma_space: float = 3.0,
        guide: int | None = None,
    ):
        super().__init__()
        if weight < 0 or (radius is not None and radius < 1) or sigma_intensity <= 0 or sigma_space <= 0:
            raise ValueError("the edge-aware loss needs weight >= 0, radius >= 1 and positive sigmas")
        self.weight, self.radius = float(weight), radius
        self.sigma_intensity, self.sigma_space = float(sigma_intensity), float(sigma_space)
        self.guide = guide

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        ndim = logits.dim() - 2
        probs = logits.float().softmax(dim=1)
        guide = image[:, image.shape[1] // 2 if self.guide is None else self.guide].detach().float()
        total, count = probs.new_zeros(()), 0.0
        radius = self.radius if self.radius is not None else (2 if ndim == 3 else 3)
        for offset in half_offsets(ndim, radius):
            g0, g1 = _pair(guide, offset)
            p0, p1 = _pair(probs, offset)
            spatial = math.exp(-sum(v * v for v in offset) / (2 * self.sigma_space**2))
            w = spatial * torch.exp(-(g0 - g1).square() / (2 * self.sigma_intensity**2))
            total = total + (w * (1 - (p0 * p1).sum(dim=1))).sum()
            count += g0.numel()
        return self.weight * total / max(count, 1.0)
