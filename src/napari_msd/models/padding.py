"""Reflective boundary padding that also works when the pad exceeds the image.

``torch.nn.functional.pad(mode="reflect")`` mirrors an axis once and therefore
refuses a pad as large as the axis itself. MS-D layers use dilations up to 10
(or more), and thin slabs or tiny tiles are smaller than that. There the image is
mirrored repeatedly (the even, periodic extension with period ``2 * (n - 1)``),
which equals torch's ``reflect`` wherever that is defined and stays defined for
any pad; an axis of length 1 is extended by repeating its single value. The fast
torch kernels are used whenever they apply.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

_NN: Any = torch._C._nn  # torch's own reflection-pad kernels (not in its type stubs)
_PAD = {1: _NN.reflection_pad1d, 2: _NN.reflection_pad2d, 3: _NN.reflection_pad3d}


def reflect_index(n: int, pad: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Source indices of an axis of length ``n`` padded by ``pad`` on both sides."""
    if n < 1:
        raise ValueError(f"cannot pad an empty axis (length {n}); give the image at least one pixel")
    return mirror_index(n, pad, pad, torch.device("cpu") if device is None else torch.device(device))


def mirror_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices of an axis of length ``n >= 1`` extended by ``before`` and ``after`` (repeated reflection; an
    axis of length 1 repeats its value). TorchScript compiles it, so the scriptable twins share it."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def _torch_can_pad(shape: torch.Size, pad: int, ndim: int) -> bool:
    return len(shape) >= ndim + 1 and all(pad < n for n in shape[-ndim:])


def reflect_pad(x: torch.Tensor, pad: int, ndim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pad the last ``ndim`` axes of ``x`` by ``pad`` on both sides (repeated reflection).

    ``out``, if given, is a preallocated contiguous tensor of the padded shape
    (it saves an allocation per call in hot loops); the result may or may not be it.
    """
    if pad == 0:
        return x
    if _torch_can_pad(x.shape, pad, ndim):
        if out is None:
            return F.pad(x, (pad,) * (2 * ndim), mode="reflect")
        return _PAD[ndim](x, (pad,) * (2 * ndim), out=out)
    for dim in range(x.ndim - ndim, x.ndim):
        x = x.index_select(dim, reflect_index(x.shape[dim], pad, x.device))
    return x
