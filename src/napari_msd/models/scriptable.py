"""TorchScript twins of the networks, for exchange formats that run a model without napari-msd (bioimage.io).

The fast MS-D (:mod:`.msd`) computes its layers in a custom autograd Function (:mod:`.msd_kernel`) that TorchScript
can neither script nor trace; :class:`ScriptableMSD` computes the same function with plain convolutions (dilated 3x3
taps on the reflect-padded maps, the 1x1 head over all of them), slower but scriptable, and :class:`ScriptableUNet`
mirrors the U-Net (and the gated U-Net, its gates being scriptable), :class:`ScriptableMUNet` the MUNet.
:func:`script_network` builds the twin of a trained network and scripts it; all take inputs of any size.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .munet import fuse_scales, resize_to
from .padding import mirror_index


def _reflect_pad(x: torch.Tensor, pad: int, ndim: int) -> torch.Tensor:
    """Pad the last ``ndim`` axes by ``pad`` on both sides by reflection, repeated where the axis is shorter."""
    if pad == 0:
        return x
    fits = True
    for axis in range(x.dim() - ndim, x.dim()):
        if x.shape[axis] <= pad:
            fits = False
    if fits:
        return F.pad(x, [pad] * (2 * ndim), mode="reflect")
    for axis in range(x.dim() - ndim, x.dim()):
        x = x.index_select(axis, mirror_index(x.shape[axis], pad, pad, x.device))
    return x


def _pad_high(x: torch.Tensor, multiples: list[int]) -> torch.Tensor:
    """Pad the spatial axes at their high end by reflection up to ``multiples`` (as the U-Net's
    :func:`~napari_msd.models.unet.pad_to_multiple`)."""
    for i in range(len(multiples)):
        axis = i + 2
        n = x.shape[axis]
        extra = (multiples[i] - n % multiples[i]) % multiples[i]
        if extra > 0:
            x = x.index_select(axis, mirror_index(n, 0, extra, x.device))
    return x


class _ScriptMSDLayer(nn.Module):
    """One MS-D layer, computed as the fast network does: the channel mixing first (a 1x1 convolution giving one
    map per kernel tap), then the few tap maps reflect-padded by each channel's dilation and summed shifted, plus
    the bias, ReLU. Equal to a dilated convolution of the reflect-padded maps, with far less padding."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dilations: list[int], ndim: int):
        super().__init__()
        width, channels = int(weight.shape[0]), int(weight.shape[1])
        self.ndim, self.n_taps = int(ndim), 3 ** int(ndim)
        # row j * n_taps + k: channel j's kernel tap k (C order over the kernel), as models.msd_kernel.tap_matrix
        rows = weight.detach().reshape(width, channels, self.n_taps).transpose(1, 2).reshape(-1, channels)
        self.tap_weight = nn.Parameter(rows.reshape(*rows.shape, *([1] * self.ndim)).clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.dilations = [int(d) for d in dilations]
        # per tap, per axis: where its window starts in units of the dilation (offset -1, 0, +1 -> 0, 1, 2)
        self.starts = [[(k // 3 ** (self.ndim - 1 - a)) % 3 for a in range(self.ndim)] for k in range(self.n_taps)]

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.ndim == 2:
            taps = F.conv2d(maps, self.tap_weight)
        else:
            taps = F.conv3d(maps, self.tap_weight)
        spatial = taps.shape[2:]
        outs: list[torch.Tensor] = []
        for j in range(len(self.dilations)):
            d = self.dilations[j]
            padded = _reflect_pad(taps[:, j * self.n_taps : (j + 1) * self.n_taps], d, self.ndim)
            out = torch.zeros_like(taps[:, 0])
            for k in range(self.n_taps):
                window = padded[:, k]
                for axis in range(self.ndim):
                    window = window.narrow(axis + 1, self.starts[k][axis] * d, spatial[axis])
                out = out + window
            outs.append(torch.relu(out + self.bias[j]).unsqueeze(1))
        return torch.cat(outs, 1)


class ScriptableMSD(nn.Module):
    """The MS-D network of an :class:`~napari_msd.models.MSDNet` with plain torch operations over one buffer of
    maps (no custom autograd function): scriptable, for any input size; logits out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        msd: Any = net
        self.ndim, self.in_channels, self.width = int(msd.ndim), int(msd.in_channels), int(msd.width)
        self.layers = nn.ModuleList(
            _ScriptMSDLayer(w, msd.bias[i * self.width : (i + 1) * self.width], msd.schedule[i], self.ndim)
            for i, w in enumerate(msd.weights)
        )
        k = msd.head_weight.shape
        head = msd.head_weight.detach().clone().reshape(k[0], k[1], *([1] * self.ndim))
        self.head_weight = nn.Parameter(head, requires_grad=False)
        self.head_bias = nn.Parameter(msd.head_bias.detach().clone(), requires_grad=False)
        self.n_maps = self.in_channels + self.width * len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.head_weight.dtype)
        shape = list(x.shape)
        shape[1] = self.n_maps
        buf = x.new_empty(shape)
        buf[:, : self.in_channels] = x
        c = self.in_channels
        for layer in self.layers:
            buf[:, c : c + self.width] = layer(buf[:, :c])
            c += self.width
        if self.ndim == 2:
            return F.conv2d(buf, self.head_weight, self.head_bias).float()
        return F.conv3d(buf, self.head_weight, self.head_bias).float()


class _UNetDown(nn.Module):
    def __init__(self, block: nn.Module, pool: nn.Module):
        super().__init__()
        self.block, self.pool = block, pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.block(x)
        return self.pool(skip), skip


class _UNetUp(nn.Module):
    def __init__(self, up: nn.Module, block: nn.Module, gate: nn.Module | None = None):
        super().__init__()
        self.up, self.block, self.gate = up, block, gate  # gate: a gated U-Net's SkipGate (models.gated_unet)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, up)
        return self.block(torch.cat([skip, up], 1))


class ScriptableUNet(nn.Module):
    """A :class:`~napari_msd.models.UNet`'s (or :class:`~napari_msd.models.GatedUNet`'s) modules in a scriptable
    forward: the same high-end reflective padding to the pooling factors and crop back, for any input size; logits
    out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        unet: Any = net
        depth = int(unet.depth)
        gates = getattr(unet, "gates", [None] * depth)
        self.downs = nn.ModuleList(_UNetDown(unet.encoders[k], unet.pools[k]) for k in range(depth))
        self.bottom = unet.encoders[depth]
        self.ups = nn.ModuleList(
            _UNetUp(unet.upsamplers[k], unet.decoders[k], gates[k]) for k in reversed(range(depth))
        )
        self.head = unet.head
        self.factors = [int(f) for f in unet.pool_factors]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.head.weight.dtype)
        sizes = list(x.shape[2:])
        x = _pad_high(x, self.factors)
        skips: list[torch.Tensor] = []
        for down in self.downs:
            x, skip = down(x)
            skips.append(skip)
        x = self.bottom(x)
        for up in self.ups:
            x = up(x, skips.pop())
        x = self.head(x)
        for i in range(len(sizes)):
            x = x.narrow(i + 2, 0, sizes[i])
        return x.float()


class ScriptableMUNet(nn.Module):
    """A :class:`~napari_msd.models.MUNet`'s modules in a scriptable forward: the U-Net's padding, encoder and
    decoder, every scale's head resized to the input and cropped back, the same area-weighted fusion
    (:func:`~napari_msd.models.munet.fuse_scales`), for any input size; the fused logits out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        munet: Any = net
        depth = int(munet.depth)
        self.downs = nn.ModuleList(_UNetDown(munet.encoders[k], munet.pools[k]) for k in range(depth))
        self.bottom = munet.encoders[depth]
        self.ups = nn.ModuleList(_UNetUp(munet.upsamplers[k], munet.decoders[k]) for k in reversed(range(depth)))
        self.heads = nn.ModuleList([munet.head, *munet.coarse_heads])  # finest first
        self.head_bias = munet.head_bias
        self.factors = [int(f) for f in munet.pool_factors]
        self.radius = int(munet.fusion_radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.head_bias.dtype)
        sizes = list(x.shape[2:])
        x = _pad_high(x, self.factors)
        padded = list(x.shape[2:])
        skips: list[torch.Tensor] = []
        for down in self.downs:
            x, skip = down(x)
            skips.append(skip)
        x = self.bottom(x)
        levels: list[torch.Tensor] = []
        for up in self.ups:
            x = up(x, skips.pop())
            levels.insert(0, x)  # finest first
        scales: list[torch.Tensor] = []
        for k, head in enumerate(self.heads):
            z = head(levels[k])
            if k > 0:
                z = resize_to(z, padded)
            for i in range(len(sizes)):
                z = z.narrow(i + 2, 0, sizes[i])
            scales.append(z)
        shape = [1] * x.dim()
        shape[1] = -1
        return (fuse_scales(scales, self.radius) + self.head_bias.view(shape)).float()


SCRIPTABLE = {"msd": ScriptableMSD, "unet": ScriptableUNet, "munet": ScriptableMUNet, "gated_unet": ScriptableUNet}


def script_network(model: nn.Module) -> torch.jit.ScriptModule:
    """A TorchScript module (CPU, eval mode) computing ``model``'s float32 logits for inputs of any size."""
    arch = getattr(model, "arch", None)
    if arch not in SCRIPTABLE:
        raise ValueError(f"architecture {arch!r} has no TorchScript export; export one of {', '.join(SCRIPTABLE)}")
    twin = SCRIPTABLE[arch](copy.deepcopy(model).to("cpu").eval()).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript, which bioimage.io still runs
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(twin)
    return scripted
