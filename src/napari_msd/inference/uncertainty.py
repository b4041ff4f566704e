"""Per-pixel uncertainty of a prediction, and a review queue of the most uncertain regions (numpy only).

* :func:`entropy` and :func:`margin` turn class probabilities (class axis first) into an uncertainty in
  [0, 1] (0: certain); :func:`uncertainty` picks one by name from :data:`UNCERTAINTY_MEASURES`;
  :func:`to_uint8` is the display and storage format (0..255).
* :func:`disagreement` turns the probabilities of an ensemble's members (member axis first, then classes) into the
  members' disagreement in [0, 1]: their mutual information (BALD), see there. It needs the members' probabilities,
  not their mean, so it is :data:`MEMBER_MEASURES`' one measure, not one of :data:`UNCERTAINTY_MEASURES`.
* :class:`RegionScores` accumulates the uncertainty of predicted blocks on a coarse grid of review tiles
  (``tile`` x ``tile`` pixels, one plane deep in 3D) and hands them out, most uncertain first, each once
  (:meth:`RegionScores.next_region`); :func:`region_center` is where to move the camera.

Example::

    scores = RegionScores(image.shape, tile=128)
    for region, probabilities in blocks:          # one prediction run: regions do not overlap
        scores.add(region, uncertainty(probabilities, "entropy"))
    region = scores.next_region()                 # None once every covered tile was visited
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..base.quantise import quantise
from .tiling import Region, normalize_region


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities)
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"probabilities must be floats in [0, 1], got dtype {p.dtype}")
    if p.ndim < 1 or p.shape[0] < 2:
        raise ValueError(f"probabilities need a class axis first with at least 2 classes, got shape {p.shape}")
    return p


def _entropy_nats(p: Any) -> np.ndarray:
    """Shannon entropy in nats over the first (class) axis of ``p`` (anything iterable by class), float64."""
    h: np.ndarray | None = None
    for pk in p:  # one class at a time: no temporary of the size of all classes
        pk = np.asarray(pk, np.float64)
        log = np.zeros_like(pk)
        np.log(pk, out=log, where=pk > 0)  # 0 * log 0 = 0
        h = -pk * log if h is None else h - pk * log
    assert h is not None  # at least two classes (checked by the callers)
    return h


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy over the first (class) axis divided by log(K): float32 in [0, 1], 1 for uniform."""
    p = _check_probabilities(probabilities)
    return np.clip(_entropy_nats(p) / math.log(p.shape[0]), 0, 1).astype(np.float32)


def margin(probabilities: np.ndarray) -> np.ndarray:
    """1 - (largest - second largest probability) over the first (class) axis: float32 in [0, 1]."""
    p = _check_probabilities(probabilities)
    k = p.shape[0]
    top = np.partition(p, (k - 2, k - 1), axis=0)
    return np.clip(1 - (top[k - 1].astype(np.float64) - top[k - 2]), 0, 1).astype(np.float32)


def disagreement(member_probabilities: np.ndarray) -> np.ndarray:
    """How much an ensemble's members disagree, from their probabilities ``(M, K, *spatial)`` (member axis first, then
    classes): float32 in [0, 1], 0 where every member says the same, 1 where ``min(M, K)`` members are each certain of a
    different class.

    It is the mutual information between the class and the member, ``H(mean_m p_m) - mean_m H(p_m)`` (BALD: Houlsby et
    al. 2011; Gal et al. 2017), divided by its largest possible value ``log min(M, K)``: the entropy of the mean
    prediction minus what the members are uncertain about on their own. Unlike the entropy of the mean, it stays low
    where every member hesitates alike (an ambiguous pixel that more labels would not settle) and is high where
    confident members contradict each other: where the networks have not learned enough, which labels fix. One
    member (M = 1) never disagrees: 0 everywhere.
    """
    p = np.asarray(member_probabilities)
    if p.ndim < 2:
        raise ValueError(f"member probabilities need a member axis and a class axis first, got shape {p.shape}")
    m, k = p.shape[:2]
    _check_probabilities(p[0])
    if m < 2:
        return np.zeros(p.shape[2:], np.float32)
    mean = sum(member.astype(np.float64) for member in p) / m  # member by member: no float64 copy of them all
    own = sum(_entropy_nats(member) for member in p) / m
    return np.clip((_entropy_nats(mean) - own) / math.log(min(m, k)), 0, 1).astype(np.float32)


UNCERTAINTY_MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"entropy": entropy, "margin": margin}
MEMBER_MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"disagreement": disagreement}  # of an ensemble's
# members' probabilities (the predictor computes it per block when asked: BlockDone.disagreement)


def uncertainty(probabilities: np.ndarray, measure: str = "entropy") -> np.ndarray:
    """The uncertainty ``measure`` (a key of :data:`UNCERTAINTY_MEASURES`) of ``probabilities``."""
    if measure in MEMBER_MEASURES:
        raise ValueError(
            f"{measure} is measured on an ensemble's member probabilities, not on class probabilities: use "
            f"{measure}(member_probabilities), or a predictor's blocks with {measure}=True"
        )
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}: choose one of {', '.join(UNCERTAINTY_MEASURES)}")
    return UNCERTAINTY_MEASURES[measure](probabilities)


def to_uint8(u: np.ndarray) -> np.ndarray:
    """Uncertainty in [0, 1] as uint8 0..255 (rounded, clipped; :func:`napari_msd.base.quantise.quantise`)."""
    return quantise(u, np.uint8)


def region_center(region: Sequence[slice]) -> tuple[float, ...]:
    """Center of a region of slices with explicit bounds, in pixel coordinates: ``(start + stop - 1) / 2``."""
    return tuple((s.start + s.stop - 1) / 2 for s in region)


def _tile_bounds(start: int, stop: int, tile: int) -> tuple[slice, np.ndarray]:
    """Tiles that ``[start, stop)`` touches, and where each begins relative to ``start`` (for reduceat)."""
    first, last = start // tile, (stop - 1) // tile + 1
    return slice(first, last), np.array([0] + [t * tile - start for t in range(first + 1, last)], np.intp)


class RegionScores:
    """Mean uncertainty per review tile of an image, and the order in which to review tiles.

    ``shape`` is (Y, X) or (Z, Y, X). Tiles are ``tile`` x ``tile`` pixels in the last two axes (smaller at
    the edges) and one plane deep in 3D. :meth:`add` regions of one prediction run must not overlap, except
    that adding exactly the same region again replaces its earlier values; call :meth:`reset` when a new
    run starts. Only grid-sized arrays are kept.
    """

    def __init__(self, shape: Sequence[int], tile: int = 128):
        shape = tuple(int(n) for n in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"image shape must be 2D (Y, X) or 3D (Z, Y, X) and positive, got {shape}")
        if int(tile) < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        self.shape, self.tile = shape, int(tile)
        self._shape3 = shape if len(shape) == 3 else (1, *shape)
        z, y, x = self._shape3
        grid = (z, -(-y // self.tile), -(-x // self.tile))
        rows = np.minimum(self.tile, y - self.tile * np.arange(grid[1]))
        cols = np.minimum(self.tile, x - self.tile * np.arange(grid[2]))
        self._tile_pixels = np.outer(rows, cols)  # pixels per tile in one plane
        self._sums = np.zeros(grid, np.float64)
        self._counts = np.zeros(grid, np.int64)
        self._reviewed = np.zeros(grid, bool)
        self._added: dict[tuple[tuple[int, int], ...], tuple[Region, np.ndarray, np.ndarray]] = {}

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Number of tiles per axis (2D images: (rows, columns))."""
        return self._sums.shape if len(self.shape) == 3 else self._sums.shape[1:]

    def _view(self, a: np.ndarray) -> np.ndarray:
        return a if len(self.shape) == 3 else a[0]

    def _region3(self, region: Sequence[slice | int]) -> Region:
        region = normalize_region(region, self.shape)
        return region if len(self.shape) == 3 else (slice(0, 1), *region)

    def reset(self, reviewed: bool = False) -> None:
        """Forget all scores (a new prediction starts); also forget reviewed marks if ``reviewed``."""
        self._sums[:] = 0
        self._counts[:] = 0
        self._added.clear()
        if reviewed:
            self._reviewed[:] = False

    def add(self, region: Sequence[slice], values: np.ndarray) -> None:
        """Accumulate the uncertainty ``values`` (floats in [0, 1] or uint8 0..255) of the image ``region``."""
        values = np.asarray(values)
        region = self._region3(region)
        size = tuple(s.stop - s.start for s in region)
        if values.shape != (size if len(self.shape) == 3 else size[1:]):
            raise ValueError(f"values of shape {values.shape} do not match region {region[-len(self.shape) :]}")
        if 0 in size:
            return
        values = values.reshape(size)
        (zs, ys, xs) = region
        gy, by = _tile_bounds(ys.start, ys.stop, self.tile)
        gx, bx = _tile_bounds(xs.start, xs.stop, self.tile)
        sums = np.add.reduceat(np.add.reduceat(values, by, axis=1, dtype=np.float64), bx, axis=2)
        if values.dtype == np.uint8:
            sums /= 255
        rows, cols = np.diff(np.append(by, size[1])), np.diff(np.append(bx, size[2]))
        counts = np.broadcast_to(np.outer(rows, cols), sums.shape)
        cells = (zs, gy, gx)
        key = tuple((s.start, s.stop) for s in region)
        if key in self._added:  # the same region predicted again: replace, do not double-count
            _, old_sums, old_counts = self._added[key]
            self._sums[cells] -= old_sums
            self._counts[cells] -= old_counts
        self._sums[cells] += sums
        self._counts[cells] += counts
        self._added[key] = (cells, sums, counts)

    def score(self) -> np.ndarray:
        """Mean uncertainty per tile (NaN where nothing was added), of shape :attr:`grid_shape`."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self._counts > 0, self._sums / self._counts, np.nan)
        return self._view(mean)

    def coverage(self) -> np.ndarray:
        """Fraction of each tile's pixels that were added, of shape :attr:`grid_shape`."""
        return self._view(np.minimum(self._counts / self._tile_pixels, 1.0))

    def next_region(self, min_coverage: float = 0.5) -> Region | None:
        """The unreviewed tile with the highest mean among tiles covered at least ``min_coverage``, marked
        reviewed, as slices in image coordinates (ties: first in C order); None when there is none left."""
        covered = (self._counts > 0) & (np.minimum(self._counts / self._tile_pixels, 1.0) >= min_coverage)
        candidates = np.flatnonzero(covered & ~self._reviewed)
        if candidates.size == 0:
            return None
        means = self._sums.flat[candidates] / self._counts.flat[candidates]
        best = candidates[np.argmax(np.where(np.isnan(means), -np.inf, means))]
        z, ty, tx = np.unravel_index(best, self._sums.shape)
        self._reviewed[z, ty, tx] = True
        t, (_, y, x) = self.tile, self._shape3
        bounds = ((z, z + 1), (ty * t, min((ty + 1) * t, y)), (tx * t, min((tx + 1) * t, x)))
        region = tuple(slice(int(lo), int(hi)) for lo, hi in bounds)
        return region if len(self.shape) == 3 else region[1:]

    def mark_reviewed(self, region: Sequence[slice | int]) -> None:
        """Mark every tile that ``region`` touches as reviewed."""
        zs, ys, xs = self._region3(region)
        if zs.stop > zs.start and ys.stop > ys.start and xs.stop > xs.start:
            t = self.tile
            self._reviewed[zs, ys.start // t : (ys.stop - 1) // t + 1, xs.start // t : (xs.stop - 1) // t + 1] = True

    @property
    def reviewed_fraction(self) -> float:
        """Reviewed tiles among tiles with any added pixels (0 when none)."""
        covered = self._counts > 0
        n = int(covered.sum())
        return float((covered & self._reviewed).sum() / n) if n else 0.0
