"""A running average of the network's weights (Polyak averaging, as in the mean teacher of Tarvainen & Valpola 2017).

Training from a few strokes takes a few hundred noisy steps at a constant learning rate; single weights then
wander around a good solution, and their exponential moving average sits nearer its centre. The average is
what the engine validates, previews, keeps and saves; the optimiser keeps stepping the raw weights. Early on
the decay is ramped up, ``min(decay, (1 + n) / (10 + n))`` at the n-th update, so the average does not
remember the random initialisation; when fine-tuning (``ramp=False``) the average starts at the parent, a good
network, and leaves it at the full decay from the first step, which damps the jolt of a fresh optimiser.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """An averaged twin of ``model``; call :meth:`update` after every optimiser step."""

    def __init__(self, model: torch.nn.Module, decay: float, ramp: bool = True):
        if not 0 < decay < 1:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay, self.ramp, self.updates, self._source = float(decay), ramp, 0, model
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses: ``min(decay, (1 + n) / (10 + n))`` for the n-th update (the decay
        itself without ``ramp``)."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.ramp else self.decay

    @torch.no_grad()
    def update(self) -> None:
        weight = 1 - self.current_decay()
        self.updates += 1
        torch._foreach_lerp_(list(self.model.parameters()), list(self._source.parameters()), weight)
        for mine, theirs in zip(self.model.buffers(), self._source.buffers(), strict=True):
            mine.copy_(theirs)  # normalisation statistics follow the raw network


__all__ = ["WeightAverage"]
