"""What a person saw around each correction and left as it was: a retraining must not change it much.

Painting a correction, a person looks at the prediction around the stroke and repaints what is wrong there; what
they leave, they accepted. Held-out labels cannot see a retraining that learns its corrections by moving every
boundary of the image (measured on ISBI 2012: a retraining that lost 0.17 membrane IoU on the unpainted slices
still beat its parent on the held-out corrections and kept the held-out earlier strokes). The ring around the
corrections sees it: such a retraining changes a tenth of the prediction there.

:class:`SeenRings` cuts windows centred on new labels of the corrected planes, keeps the pixels farther than
``margin`` from every label (new or earlier: those are the labels' own business) and records the parent's
prediction there, as the person saw it (the parent as saved), where the parent was confident (probability at least
``confidence``: an uncertain prediction is expected to move). :meth:`SeenRings.agreement` is the class-balanced
share of those pixels another network predicts the same (the mean over the parent's classes of the share kept).
Corrections are new labels on an image that also carries the labels the parent learned (replayed); new labels on
another image are new data, and a parent confidently wrong there is expected to change. xy windows of 2D and 2.5D
inputs only; 3D training has no rings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from ..base.inputs import Context, InputSpec, network_input
from ..base.normalization import Normalization
from .sampling import LabelIndex, TrainingData


class SeenRings:
    """Windows around the new labels of ``indices`` with the pixels a person saw and left, and ``parent``'s
    prediction of them. ``others``: earlier labels (replayed), counted as labels where they share an image.
    ``context``: the parent's extra input channels (its forest's, as it predicts)."""

    def __init__(
        self,
        parent: torch.nn.Module,
        indices: Sequence[LabelIndex],
        others: Sequence[TrainingData],
        spec: InputSpec,
        normalization: Normalization,
        device: torch.device,
        windows: int = 8,
        side: int = 128,
        margin: int = 8,
        confidence: float = 0.9,
        seed: int = 0,
        context: Context | None = None,
    ):
        if spec.mode == "3d":
            raise ValueError("the rings around corrections are xy windows: 3D inputs have none")
        rng = np.random.default_rng(seed)
        self.spec, self.normalization, self.device = spec, normalization, device
        self.tiles: list[tuple[np.ndarray, np.ndarray]] = []  # (network input, mask of seen pixels)
        for ix in indices:
            d = ix.data
            same_image = [o.labels for o in others if o.image is d.image]
            if not same_image:  # new labels on an image the parent never learned are new data, not corrections
                continue
            painted = np.concatenate(
                [xy for group in (ix.train, ix.val) for xy in group.values()]
                or [np.zeros((0, len(d.image.shape)), int)]
            )
            if not len(painted):
                continue
            for k in rng.choice(len(painted), size=min(windows, len(painted)), replace=False):
                center = painted[k]
                size = tuple(min(side, n) for n in d.image.shape[-2:])
                x, box = network_input(d.image, spec, normalization, center, size, "xy", context)
                plane = box if len(box) == 2 else (int(center[0]), *box[-2:])
                labeled = np.asarray(d.labels[plane]) > 0
                for other in same_image:
                    labeled |= np.asarray(other[plane]) > 0
                seen = ndi.distance_transform_edt(~labeled) > margin
                if seen.any():
                    self.tiles.append((x, seen))
        self.reference, self.masks = [], []
        for (label, prob), (_, seen) in zip(self._predict(parent, probabilities=True), self.tiles):
            mask = seen & (prob >= confidence)
            self.masks.append(mask)
            self.reference.append(label[mask])

    def __len__(self) -> int:
        return len(self.tiles)

    @torch.no_grad()
    def _predict(self, model: torch.nn.Module, probabilities: bool = False) -> list:
        """Per tile, the predicted classes, or ``(classes, probability of the predicted class)``."""
        was_training = model.training
        model.eval()
        out = []
        try:
            for x, _ in self.tiles:
                p = torch.softmax(model(torch.from_numpy(x)[None].to(self.device)).float(), 1)[0]
                best, label = p.max(0)
                out.append((label.cpu().numpy(), best.cpu().numpy()) if probabilities else label.cpu().numpy())
        finally:
            model.train(was_training)
        return out

    def agreement(self, model: torch.nn.Module) -> float:
        """Class-balanced share of the seen pixels ``model`` predicts as the parent did (1.0 without any)."""
        ref = np.concatenate(self.reference) if self.reference else np.zeros(0, int)
        if not ref.size:
            return 1.0
        now = np.concatenate([p[mask] for p, mask in zip(self._predict(model), self.masks)])
        return float(np.mean([(now[ref == c] == c).mean() for c in np.unique(ref)]))


__all__ = ["SeenRings"]
