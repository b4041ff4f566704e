"""A U-Net with gated skip connections, after F-CLmser-S (Guo, Huang, Chen & Tu, "Regularize network skip
connections by gating mechanisms for electron microscopy image segmentation"; evaluated on ISBI 2012 EM).

Each skip connection of :class:`~napari_msd.models.unet.UNet` passes through a gate before the decoder concatenates
it; ``skip_gates`` chooses the gate per level (level 0: full resolution):

* ``"channel"``: channel gating, "in the same way as" RCAN's channel attention (the paper's ref. [17], a
  squeeze-and-excitation branch): the mean of each channel, a 1x1 convolution to ``C / 16`` channels, ReLU, a 1x1
  convolution back to ``C``, sigmoid: one factor in [0, 1] per channel, ``F1 = W_CG * F``.
* ``"pixel"``: pixel-level gating: the mean over the channels, a 3x3 convolution (the paper: every convolution is
  3x3) and a sigmoid: one factor in [0, 1] per pixel, the same for every channel.
* ``"channel+pixel"``: both, as the paper's eq. (1): ``F1 = W_CG * F``, ``F2 = W_PG(F1) * F1``.
* ``"confidence"``: the paper's gating mask for low-level layers, eq. (2): ``f(x) = (1 - x**2) ** gamma``, with
  ``x`` in [-1, 1] a temporary output of the decoder (the paper's example: membrane -1, cell +1): high where the
  decoder is unsure, so that the skip passes details there. Here ``x = tanh(1x1 convolution of the decoder's
  up-sampled features at that level)``, one map that scales every skip channel; ``gamma = 3``, the paper's best.
* ``"none"``: the plain skip.

The default is the paper's layout: ``"confidence"`` at the two levels nearest the output (its two-stage cascade of
masks), ``"channel+pixel"`` at the deeper ones ("high-level layers close to the central hidden layer"); the text
does not say how many levels of each (its Figure 2 does, which the text extraction lacks), two follows the cascade.

Where the paper is silent or does not fit napari-msd, chosen here:

* The squeeze of the channel gate averages over a window of ``2 * ceil(squeeze_radius / f) + 1`` cells centred on
  each position (``f``: that level's pooling factor; ``squeeze_radius`` 32 px: about the 64-pixel training patch),
  not over the whole feature map (see :mod:`.windows`): a whole-map mean makes the output depend on the whole image,
  and napari-msd predicts block by block. On an image no larger than the window the gates are the paper's
  per-channel scalars.
* The temporary output of a confidence gate is not supervised (the paper's loss, eq. (3), is on the final output);
  it is learned through the gate. The paper's outputs are one channel in [-1, 1]; for K classes its binary
  confidence is not a class prediction, so one learned map in [-1, 1] serves every number of classes.
* Building blocks and loss are napari-msd's U-Net and sparse cross-entropy, not the paper's residual blocks, 3x3
  transposed convolutions and smooth-L1 loss on +-1 targets: the gating is what is taken over. The paper reports
  8.3 M parameters for its network; this one's count is the U-Net's plus the gates' (see
  :attr:`GatedUNet.gate_parameters`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .unet import _CONV, UNet
from .windows import box_mean

GATES = ("none", "channel", "pixel", "channel+pixel", "confidence")
REDUCTION = 16  # RCAN's channel-attention reduction
GAMMA = 3.0  # the paper's best exponent of the confidence mask (of 1, 2, 3, 4)


def paper_gates(depth: int) -> list[str]:
    """F-CLmser-S's layout for ``depth`` levels: confidence masks at levels 0 and 1, channel and pixel gates above."""
    return ["confidence" if k < 2 else "channel+pixel" for k in range(depth)]


class ChannelGate(nn.Module):
    """Squeeze (the mean of each channel over a window of half-widths ``radii``), excitation (1x1 convolution to
    ``channels // reduction``, ReLU, 1x1 convolution back, sigmoid); ``forward`` scales the channels."""

    def __init__(self, channels: int, ndim: int, radii: list[int], reduction: int = REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = _CONV[ndim](channels, hidden, 1)
        self.excite = _CONV[ndim](hidden, channels, 1)
        self.radii = [int(r) for r in radii]

    def gate(self, f: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` factors in [0, 1]; constant over an image within the window (per-channel scalars)."""
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(box_mean(f, self.radii)))))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.gate(f)


class PixelGate(nn.Module):
    """The mean over the channels, a 3x3 (3x3x3, or 1x3x3 on anisotropic levels) convolution, a sigmoid; ``forward``
    scales every channel of a pixel by its factor."""

    def __init__(self, ndim: int, flat: bool):
        super().__init__()
        kernel, padding = ((1, 3, 3), (0, 1, 1)) if flat else (3, 1)
        self.conv = _CONV[ndim](1, 1, kernel, padding=padding)

    def gate(self, f: torch.Tensor) -> torch.Tensor:
        """``(N, 1, *spatial)`` factors in [0, 1]."""
        return torch.sigmoid(self.conv(f.mean(dim=1, keepdim=True)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.gate(f)


class ConfidenceGate(nn.Module):
    """The confidence mask ``(1 - x**2) ** gamma`` of a temporary output ``x = tanh(1x1 convolution)`` of the
    decoder's up-sampled features; ``forward`` scales the skip by it."""

    def __init__(self, channels: int, ndim: int, gamma: float = GAMMA):
        super().__init__()
        self.temporary = _CONV[ndim](channels, 1, 1)
        self.gamma = float(gamma)

    def gate(self, up: torch.Tensor) -> torch.Tensor:
        """``(N, 1, *spatial)`` mask in [0, 1]: 1 where the temporary output is 0 (unsure), 0 where it is +-1."""
        x = torch.tanh(self.temporary(up))
        return torch.clamp(1.0 - x * x, min=0.0) ** self.gamma

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip * self.gate(up)


class SkipGate(nn.Module):
    """The gate of one skip connection (one of :data:`GATES`); ``forward(skip, up)`` gives the gated skip, ``up``
    being the decoder's up-sampled features at that level."""

    def __init__(self, kind: str, channels: int, ndim: int, flat: bool, radii: list[int], gamma: float = GAMMA):
        super().__init__()
        if kind not in GATES:
            raise ValueError(f"a skip gate is one of {', '.join(GATES)}; got {kind!r}")
        self.kind = kind
        self.channel = ChannelGate(channels, ndim, radii) if "channel" in kind else None
        self.pixel = PixelGate(ndim, flat) if "pixel" in kind else None
        self.confidence = ConfidenceGate(channels, ndim, gamma) if kind == "confidence" else None

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            skip = self.channel(skip)
        if self.pixel is not None:
            skip = self.pixel(skip)
        if self.confidence is not None:
            skip = self.confidence(skip, up)
        return skip

    def extra_repr(self) -> str:
        return self.kind


class GatedUNet(UNet):
    """:class:`~napari_msd.models.unet.UNet` whose skip connections are gated (see the module docstring).

    Parameters as the U-Net, plus ``skip_gates``: one of :data:`GATES` for every level, or a list of one per level
    (level 0 first); None: :func:`paper_gates`. ``squeeze_radius``: half-width in full-resolution pixels of the
    channel gates' squeeze window. ``confidence_gamma``: the exponent of the confidence mask.
    """

    arch = "gated_unet"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ndim: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        norm: str | None = "batch",
        anisotropic_levels: int = 0,
        skip_gates: str | Sequence[str] | None = None,
        squeeze_radius: int = 32,
        confidence_gamma: float = GAMMA,
    ):
        super().__init__(in_channels, out_channels, ndim, depth, base_channels, norm, anisotropic_levels)
        if skip_gates is None:
            gates = paper_gates(self.depth)
        elif isinstance(skip_gates, str):
            gates = [skip_gates] * self.depth
        else:
            gates = [str(g) for g in skip_gates]
        if len(gates) != self.depth or any(g not in GATES for g in gates):
            raise ValueError(
                f"skip_gates must be one of {', '.join(GATES)} or a list of one per level ({self.depth}); "
                f"got {skip_gates!r}"
            )
        if int(squeeze_radius) < 0 or float(confidence_gamma) <= 0:
            raise ValueError(
                f"squeeze_radius must be >= 0 and confidence_gamma > 0, got {squeeze_radius} and {confidence_gamma}"
            )
        self.skip_gates, self.squeeze_radius, self.confidence_gamma = (
            gates,
            int(squeeze_radius),
            float(confidence_gamma),
        )
        self.gates = nn.ModuleList(
            SkipGate(
                gates[k],
                self.base_channels * 2**k,
                self.ndim,
                k < self.anisotropic_levels,
                self._squeeze_cells(k),
                self.confidence_gamma,
            )
            for k in range(self.depth)
        )

    def _level_factors(self, level: int) -> tuple[int, ...]:
        """Pooling factor per spatial axis from full resolution down to ``level``."""
        yx = 2**level
        if self.ndim == 2:
            return (yx, yx)
        return (2 ** max(0, level - self.anisotropic_levels), yx, yx)

    def _squeeze_cells(self, level: int) -> list[int]:
        """The channel gate's squeeze half-widths at ``level``, in that level's cells per axis."""
        return [-(-self.squeeze_radius // f) for f in self._level_factors(level)]

    def _gate_reach(self, level: int) -> int:
        """How far in full-resolution pixels (in-plane) the gate of ``level`` looks around a position of its skip."""
        kind, cell = self.skip_gates[level], 2**level
        reach = self._squeeze_cells(level)[-1] * cell if "channel" in kind else 0
        return reach + (cell if "pixel" in kind else 0)

    @property
    def receptive_field(self) -> int:
        """Upper bound of the receptive-field radius in pixels, in-plane (it also bounds z).

        As the U-Net's (:attr:`UNet.receptive_field <napari_msd.models.unet.UNet.receptive_field>`), level by level
        from the bottleneck up: the decoder's output at level ``k`` reaches ``2 * 2**k`` (its convolutions) beyond
        the farther of its two inputs: the gated skip, ``2 * (2**(k+1) - 1)`` (every encoder convolution down to
        ``k``) plus the gate's reach (a squeeze window of ``ceil(squeeze_radius / 2**k)`` cells, a pixel gate's 3x3
        convolution one cell; a confidence mask is computed pixel by pixel), and the up-sampled path,
        ``2**k`` (the neighbour in the coarse cell) beyond the level below. Without gates it is the U-Net's
        ``7 * 2**depth - 5``.
        """
        radius = 2 * (2 ** (self.depth + 1) - 1)  # the bottleneck: every encoder convolution
        for k in reversed(range(self.depth)):
            skip = 2 * (2 ** (k + 1) - 1) + self._gate_reach(k)
            radius = 2 * 2**k + max(skip, 2**k + radius)
        return radius

    @property
    def gate_parameters(self) -> int:
        """Parameters of the gates alone (the rest are the U-Net's)."""
        return sum(p.numel() for p in self.gates.parameters())

    @property
    def activation_maps(self) -> int:
        """Rough number of full-resolution maps a forward pass holds at once (inference), for tile sizes: the U-Net's
        plus a gated copy of the finest skip."""
        return 7 * self.base_channels + self.in_channels + 2 * self.out_channels

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {
            **super().config(),
            "skip_gates": list(self.skip_gates),
            "squeeze_radius": self.squeeze_radius,
            "confidence_gamma": self.confidence_gamma,
        }

    def _decode_level(self, level: int, skip: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
        up = self.upsamplers[level](below)
        return self.decoders[level](torch.cat([self.gates[level](skip, up), up], dim=1))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, skip_gates={self.skip_gates}, squeeze_radius={self.squeeze_radius}, "
            f"confidence_gamma={self.confidence_gamma}"
        )
