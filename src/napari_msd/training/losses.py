"""Losses over sparse labels: unlabeled pixels (target IGNORE) contribute nothing.

Cross-entropy, optionally class-weighted, plus an optional soft Dice term computed over
labeled pixels only. Automatic class weights use median-frequency balancing (Eigen &
Fergus 2015): ``w_c = median(f) / f_c`` over the labeled-pixel frequencies ``f``,
clipped to [0.1, 10] so a class painted with a handful of pixels cannot dominate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .sampling import IGNORE


def auto_class_weights(counts: Mapping[int, int] | Sequence[int], n_classes: int) -> list[float]:
    """Median-frequency weights for classes ``0..n_classes-1`` from labeled pixel counts (classes 1..K)."""
    if isinstance(counts, Mapping):
        freq = np.array([counts.get(c + 1, 0) for c in range(n_classes)], float)
    else:
        freq = np.asarray(counts, float)
    present = freq > 0
    if not present.any():
        return [1.0] * n_classes
    weights = np.ones(n_classes)
    weights[present] = np.median(freq[present]) / freq[present]
    return [float(w) for w in np.clip(weights, 0.1, 10.0)]


class SparseLoss(torch.nn.Module):
    """``CE(weights) + dice_weight * (1 - soft Dice)`` over pixels whose target is not IGNORE."""

    def __init__(self, n_classes: int, class_weights: Sequence[float] | None = None, dice_weight: float = 0.0):
        super().__init__()
        self.n_classes, self.dice_weight = n_classes, float(dice_weight)
        weights = (
            torch.ones(n_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        )
        if weights.shape != (n_classes,):
            raise ValueError(f"need {n_classes} class weights, got {len(weights)}")
        self.class_weights: torch.Tensor
        self.register_buffer("class_weights", weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labeled = target != IGNORE
        if not labeled.any():  # nothing labeled in this batch: a zero that still has a graph
            return logits.sum() * 0.0
        logits = logits.float()
        loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE)
        if self.dice_weight > 0:
            probs = logits.softmax(dim=1).movedim(1, -1)[labeled]  # (M, K)
            onehot = F.one_hot(target[labeled], self.n_classes).to(probs.dtype)
            inter = (probs * onehot).sum(0)
            denom = probs.sum(0) + onehot.sum(0)
            dice = (2 * inter + 1e-6) / (denom + 1e-6)
            present = onehot.sum(0) > 0
            loss = loss + self.dice_weight * (1 - dice[present].mean())
        return loss
