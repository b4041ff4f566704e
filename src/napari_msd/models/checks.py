"""Input checks shared by the networks: one clear line instead of a shape error deep inside torch."""

from __future__ import annotations

import torch


def check_input(name: str, x: torch.Tensor, in_channels: int, ndim: int) -> None:
    """Refuse anything but ``(batch, in_channels, Y, X)`` (or ``Z, Y, X``) with at least one pixel."""
    if x.ndim != ndim + 2 or x.shape[1] != in_channels:
        axes = "Y, X" if ndim == 2 else "Z, Y, X"
        raise ValueError(f"{name} expects input of shape (batch, {in_channels}, {axes}), got {tuple(x.shape)}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{name} got an empty image of shape {tuple(x.shape)}")
