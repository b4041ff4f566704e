"""U-Net for 2D or 3D images (Ronneberger et al. 2015), in the torch-em / MONAI style.

``depth`` max-pooling steps by 2; encoder level ``k`` has ``base_channels * 2**k``
channels; every level is two (conv, norm, ReLU) blocks with 3x3 (3x3x3) kernels and
zero padding 1. The decoder up-samples with a stride-2 transposed convolution
(kernel = stride, so no overlap), concatenates the skip connection and applies two
blocks; a 1x1 convolution gives the logits. For anisotropic EM stacks the first
``anisotropic_levels`` levels neither pool nor convolve along z.

Normalisation is batch norm or none: in eval mode batch norm is a fixed per-channel
affine map, so a tile with enough context predicts exactly what the whole image
does. Instance or group norm would make the result depend on the tile's content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_input
from .padding import reflect_index

NORMS = ("batch", "none")

# by dimension; typed Any, since the 2D and 3D classes' signatures differ only in their tuple lengths
_CONV: dict[int, Any] = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, Any] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL: dict[int, Any] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCHNORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _parse_norm(norm: str | None) -> str:
    key = "none" if norm is None else str(norm).lower()
    if key not in NORMS:
        raise ValueError(f"norm must be 'batch' or None/'none' (instance/group norm break tiling), got {norm!r}")
    return key


def pad_to_multiple(x: torch.Tensor, multiples: tuple[int, ...]) -> torch.Tensor:
    """Pad the spatial axes of ``(N, C, *spatial)`` at their high end up to a multiple of ``multiples``.

    Padding is reflective (``torch`` ``reflect``) where the axis is longer than the pad;
    otherwise the axis keeps being mirrored (period ``2 * (n - 1)``), and an axis of
    length 1 is repeated. Padding only the high end anchors the pooling grid at index 0.
    """
    spatial = x.shape[2:]
    extra = [-n % m for n, m in zip(spatial, multiples)]
    if not any(extra):
        return x
    if all(e < n for e, n in zip(extra, spatial)):
        pads: list[int] = []
        for e in reversed(extra):  # F.pad lists the last axis first
            pads += [0, e]
        return F.pad(x, pads, mode="reflect")
    for axis, (n, e) in enumerate(zip(spatial, extra)):
        if e:
            x = x.index_select(axis + 2, reflect_index(n, e, x.device)[e:])
    return x


def crop_to(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """The low corner of ``x``'s spatial axes, ``spatial`` in size: takes back :func:`pad_to_multiple`."""
    return x[(slice(None), slice(None), *(slice(0, n) for n in spatial))]


class UNet(nn.Module):
    """U-Net with ``depth`` poolings, for ``(N, in_channels, *spatial)`` images of any size.

    Parameters
    ----------
    in_channels, out_channels : channels of the input and of the output logits (no softmax).
    ndim : 2 (YX) or 3 (ZYX).
    depth : number of pooling steps; the bottleneck is level ``depth``.
    base_channels : channels of level 0; level ``k`` has ``base_channels * 2**k``.
    norm : ``"batch"`` (BatchNorm, default) or ``None`` / ``"none"``.
    anisotropic_levels : 3D only; the first ``k`` levels use (1, 3, 3) convolutions and
        (1, 2, 2) pooling / up-sampling, so z is pooled only ``depth - k`` times.

    The input is padded at the high end of each axis to a multiple of :attr:`pool_factors`
    (see :func:`pad_to_multiple`) and the output is cropped back to the input's size.
    Up-sampling is a transposed convolution with kernel = stride = the pooling factor.
    """

    arch = "unet"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ndim: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        norm: str | None = "batch",
        anisotropic_levels: int = 0,
    ):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("depth", depth),
            ("base_channels", base_channels),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        norm = _parse_norm(norm)
        anisotropic_levels = int(anisotropic_levels)
        if anisotropic_levels and ndim != 3:
            raise ValueError(f"anisotropic_levels needs ndim=3, got ndim={ndim}")
        if not 0 <= anisotropic_levels <= depth:
            raise ValueError(f"anisotropic_levels must be between 0 and depth={depth}, got {anisotropic_levels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.ndim, self.depth, self.base_channels = int(ndim), int(depth), int(base_channels)
        self.norm, self.anisotropic_levels = norm, anisotropic_levels

        channels = [self.base_channels * 2**k for k in range(self.depth + 1)]
        self.encoders = nn.ModuleList()
        for k in range(self.depth + 1):
            self.encoders.append(self._block(in_channels if k == 0 else channels[k - 1], channels[k], k))
        self.pools = nn.ModuleList(_POOL[ndim](self._scale(k), self._scale(k)) for k in range(self.depth))
        self.upsamplers = nn.ModuleList(
            _CONV_T[ndim](channels[k + 1], channels[k], self._scale(k), self._scale(k)) for k in range(self.depth)
        )
        self.decoders = nn.ModuleList(self._decoder_block(2 * channels[k], channels[k], k) for k in range(self.depth))
        self.head = _CONV[ndim](channels[0], out_channels, 1)

    def _scale(self, level: int) -> int | tuple[int, ...]:
        """Pooling kernel / stride between ``level`` and ``level + 1``."""
        return (1, 2, 2) if level < self.anisotropic_levels else 2

    def _block(self, c_in: int, c_out: int, level: int, convs: int = 2, leaky: float = 0.0) -> nn.Sequential:
        """``convs`` times (convolution, norm, ReLU) at ``level``; ``leaky`` > 0: leaky ReLU of that slope."""
        flat = level < self.anisotropic_levels
        kernel, padding = ((1, 3, 3), (0, 1, 1)) if flat else (3, 1)
        layers: list[nn.Module] = []
        for i in range(convs):
            layers.append(
                _CONV[self.ndim](c_in if i == 0 else c_out, c_out, kernel, padding=padding, bias=self.norm == "none")
            )
            if self.norm == "batch":
                layers.append(_BATCHNORM[self.ndim](c_out))
            layers.append(nn.LeakyReLU(leaky, inplace=True) if leaky else nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    def _decoder_block(self, c_in: int, c_out: int, level: int) -> nn.Sequential:
        """The blocks of decoder ``level`` after the concatenation (a subclass may build others)."""
        return self._block(c_in, c_out, level)

    @property
    def pool_factors(self) -> tuple[int, ...]:
        """Total downsampling per spatial axis: sizes are padded to, and tile origins should be, multiples of it."""
        yx = 2**self.depth
        if self.ndim == 2:
            return (yx, yx)
        return (2 ** (self.depth - self.anisotropic_levels), yx, yx)

    @property
    def receptive_field(self) -> int:
        """Upper bound of the receptive-field radius in pixels, in-plane (it also bounds z).

        Each 3x3 convolution at level ``k`` reaches ``1 * 2**k`` input pixels further:
        two convolutions per encoder and decoder level, two in the bottleneck. A pooling
        step at level ``k`` and its transposed convolution together shift by at most
        ``2**k`` pixels (an output pixel's coarse cell covers it and one neighbour).
        The radius ``r_k`` of the sub-network below level ``k`` obeys
        ``r_depth = 2``, ``r_k = 4 + 1 + 2 * r_{k+1}``, i.e. ``r_0 = 7 * 2**depth - 5``;
        it is exact for the deepest path whatever the pixel's position on the pooling grid.
        """
        radius = 2 * 2**self.depth  # bottleneck
        for k in range(self.depth):
            radius += 4 * 2**k + 2**k  # encoder + decoder convolutions, pooling + up-sampling
        return radius

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "ndim": self.ndim,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "norm": self.norm,
            "anisotropic_levels": self.anisotropic_levels,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, *spatial)`` to ``(N, out_channels, *spatial)`` logits, any spatial size."""
        check_input(type(self).__name__, x, self.in_channels, self.ndim)
        spatial = x.shape[2:]
        x = pad_to_multiple(x.to(self.head.weight.dtype), self.pool_factors)
        return crop_to(self.head(self._decode(x)[0]), spatial)

    def _decode(self, x: torch.Tensor, every_level: bool = False) -> list[torch.Tensor]:
        """The decoder's output at level 0 (full resolution) for ``x`` padded to :attr:`pool_factors`; with
        ``every_level``, its outputs at every level, finest first."""
        skips = []
        for k in range(self.depth):
            x = self.encoders[k](x)
            skips.append(x)
            x = self.pools[k](x)
        x = self.encoders[self.depth](x)
        levels = []
        for k in reversed(range(self.depth)):
            x = self._decode_level(k, skips.pop(), x)
            if every_level:
                levels.append(x)
        return levels[::-1] if every_level else [x]

    def _decode_level(self, level: int, skip: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
        """Decoder ``level``: up-sample the level below, concatenate the encoder's skip, the blocks."""
        return self.decoders[level](torch.cat([skip, self.upsamplers[level](below)], dim=1))

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, ndim={self.ndim}, depth={self.depth}, "
            f"base_channels={self.base_channels}, norm={self.norm}, anisotropic_levels={self.anisotropic_levels}"
        )
