"""Robust intensity normalisation, estimated once and stored with the model.

EM images arrive as uint8, uint16, int16 or float32 tomograms with negative values and
outliers. The low and high percentiles (1 and 99 by default) are mapped to 0 and 1;
values beyond them are kept (not clipped), so bright or dark structures stay distinct.
On large volumes the percentiles are estimated from random blocks, never from a full read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """``(x - low) / (high - low)`` with ``low``/``high`` the image's ``percentiles``."""

    low: float
    high: float
    percentiles: tuple[float, float] = (1.0, 99.0)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        scale = self.high - self.low if self.high > self.low else 1.0
        out = np.asarray(array, dtype=np.float32) - np.float32(self.low)
        out *= np.float32(1.0 / scale)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": "percentile", "low": self.low, "high": self.high, "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        if data.get("method", "percentile") != "percentile":
            raise ValueError(f"unknown normalisation method {data.get('method')!r}")
        low_p, high_p = (float(p) for p in data.get("percentiles", (1, 99)))
        return cls(float(data["low"]), float(data["high"]), (low_p, high_p))


def _sample_blocks(image: Any, budget: int, rng: np.random.Generator) -> np.ndarray:
    """About ``budget`` values from random blocks of ``image`` (all values if it is small)."""
    shape = tuple(image.shape)
    total = int(np.prod(shape))
    if total <= 4 * budget:
        return np.asarray(image).ravel()
    side = max(8, int(round((budget / 16) ** (1 / len(shape)))))  # 16 blocks of side**ndim values
    pieces, taken = [], 0
    while taken < budget:
        box = tuple(
            slice(s, s + min(side, n)) for s, n in ((int(rng.integers(0, max(n - side, 0) + 1)), n) for n in shape)
        )
        block = np.asarray(image[box]).ravel()
        pieces.append(block)
        taken += block.size
    return np.concatenate(pieces)


def estimate_normalization(
    images: Sequence[Any], percentiles: tuple[float, float] = (1.0, 99.0), budget: int = 2_000_000, seed: int = 0
) -> Normalization:
    """Percentiles over all ``images`` together, sampled with at most about ``budget`` values each."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([_sample_blocks(im, budget, rng).astype(np.float64, copy=False) for im in images])
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("the image holds no finite values; check the file")
    low, high = np.percentile(values, percentiles)
    if high <= low:  # a (nearly) constant image: fall back to the full range
        low, high = float(values.min()), float(values.max())
    return Normalization(float(low), float(high), (float(percentiles[0]), float(percentiles[1])))
