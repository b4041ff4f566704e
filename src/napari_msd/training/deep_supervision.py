"""Deep supervision: a network with an output at every decoder scale (MUNet) is trained on each of them.

A network that has ``forward_scales(x)`` (:class:`~napari_msd.models.MUNet`) returns every scale's logits, resized to
the input, and last the fused logits that ``model(x)`` returns; the training loss is then the sparse loss averaged
over the scales and the fused output. Every other network trains on its one output, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model``'s logits for ``x`` and, for a network with scales, every scale's logits (else an empty list)."""
    forward_scales = getattr(model, "forward_scales", None)
    if forward_scales is None:
        return model(x), []
    *scales, fused = forward_scales(x)
    return fused, scales


def supervised(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    scales: list[torch.Tensor],
    target: torch.Tensor,
) -> torch.Tensor:
    """``loss_fn(logits, target)``, averaged with ``loss_fn`` on every scale's logits when there are any."""
    loss = loss_fn(logits, target)
    for scale in scales:
        loss = loss + loss_fn(scale, target)
    return loss / (1 + len(scales))
