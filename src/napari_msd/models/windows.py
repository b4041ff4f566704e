"""Means over a window around every pixel: the tiling-safe stand-in for a mean over the whole image.

Some papers' layers average over the whole input (MUNet's mask areas, the squeeze of a squeeze-and-excitation
gate). Such a network's output at a pixel then depends on every pixel of the image, so a tile predicts something
else than the whole image does, and napari-msd predicts block by block. :func:`box_mean` averages over the
``(2 r + 1)``-wide window centred on each pixel instead, over the part of it inside the array: on an array no
larger than ``r + 1`` along every axis, every window holds the whole array and it is the global mean. The sum over a
window is direct (no running sums), so a window's mean does not depend on where in the array the window lies.
Scriptable (TorchScript), for the exported twins (:mod:`.scriptable`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, radii: list[int]) -> torch.Tensor:
    """Per channel, the mean of ``x`` ``(N, C, *spatial)`` over the box of half-widths ``radii`` (one per spatial
    axis) centred on each pixel, clipped to the array (the mean over the pixels of the box inside it)."""
    ndim = x.dim() - 2
    for axis in range(ndim):
        r = radii[axis]
        n = x.shape[axis + 2]
        if r == 0 or n == 1:
            continue
        pad = [0] * (2 * ndim)
        pad[2 * (ndim - 1 - axis)] = r  # F.pad lists the last axis first
        pad[2 * (ndim - 1 - axis) + 1] = r
        kernel = [1] * ndim
        kernel[axis] = 2 * r + 1
        padded = F.pad(x, pad)  # zeros: the window's sum counts only the array's pixels
        if ndim == 2:
            total = F.avg_pool2d(padded, kernel, stride=1) * float(2 * r + 1)
        else:
            total = F.avg_pool3d(padded, kernel, stride=1) * float(2 * r + 1)
        index = torch.arange(n, device=x.device)
        count = (torch.clamp(index + r, max=n - 1) - torch.clamp(index - r, min=0) + 1).to(x.dtype)
        shape = [1] * x.dim()
        shape[axis + 2] = n
        x = total / count.view(shape)
    return x
