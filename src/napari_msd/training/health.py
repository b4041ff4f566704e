"""Is a trained network usable? Checks on what it predicts, not only on the strokes it was scored on.

A network can score well on held-out strokes and still be useless: early in training, or after a fine-tuning
on many corrections of one class, it may predict one class nearly everywhere (a *collapsed* network). Such a
network is never kept as the best model, saved or offered as a version. A painted class that the network
(almost) never predicts is a *warning*: the model may be fine elsewhere, but the person should know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DOMINANT = 0.98  # one class on at least this fraction of the pixels: collapsed
ABSENT = 0.001  # a painted class on fewer than this fraction of the pixels: flagged


@dataclass(frozen=True)
class Health:
    """Predicted class fractions and the verdict drawn from them."""

    fractions: tuple[float, ...]  # predicted fraction of each class 1..K
    collapsed: str | None = None  # why the network is unusable, or None
    warning: str | None = None  # what a person should know about an otherwise usable network

    def to_dict(self, class_names: Sequence[str]) -> dict:
        return {
            "predicted_fractions": {n: round(f, 5) for n, f in zip(class_names, self.fractions)},
            "collapsed": self.collapsed,
            "warning": self.warning,
        }


def check(
    predicted_counts: Sequence[int] | np.ndarray,
    painted: Sequence[int],
    class_names: Sequence[str],
    recall: Sequence[float] | np.ndarray | None = None,
) -> Health:
    """Judge a prediction from its per-class pixel counts (index ``k`` = class ``k + 1``) and the classes painted
    (1-based). Collapsed: several classes painted, one of them predicted on >= 98% of the pixels and, when the
    per-class ``recall`` of held-out labels is known (NaN: none held out), another class's held-out pixels mostly
    missed. (Tiles around corrections of one class may rightly be that class nearly everywhere.)"""
    counts = np.asarray(predicted_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return Health(tuple(0.0 for _ in counts))
    fractions = counts / total
    painted = sorted({int(c) for c in painted if 1 <= int(c) <= len(counts)})
    collapsed = warning = None
    if len(painted) >= 2:
        top = int(fractions.argmax())
        missed = recall is None or any(
            c - 1 != top and np.isfinite(recall[c - 1]) and recall[c - 1] < 0.5 for c in painted
        )
        if fractions[top] >= DOMINANT and missed:
            collapsed = (
                f"the network predicts {class_names[top]} on {fractions[top]:.1%} of the pixels although "
                f"{len(painted)} classes are painted"
            )
        missing = [class_names[c - 1] for c in painted if fractions[c - 1] < ABSENT]
        if missing and collapsed is None:
            warning = (
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} painted but (almost) never "
                "predicted; paint more of it or train longer"
            )
    return Health(tuple(float(f) for f in fractions), collapsed, warning)


__all__ = ["ABSENT", "DOMINANT", "Health", "check"]
