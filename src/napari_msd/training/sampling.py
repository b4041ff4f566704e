"""Which pixels train, which validate, and class-balanced patches around labeled pixels.

Labels follow napari: 0 = unlabeled (ignored), 1..K = classes, K at most :data:`MAX_CLASSES`.
The labeled pixels of each (image, labels) pair are indexed once by scanning the labels in slabs
(never the whole volume at once; on densely labeled giant volumes each class is thinned to a
random subset).

Validation holds out pixels spatially apart from the training ones, never random neighbours:
for a class painted as several strokes, whole strokes are held out (connected components in 2D
or 3D, strokes closer than a few pixels, or on neighbouring slices, counting as one); for a
class painted as one or two large regions (dense labels), a compact block of cells (32 px,
one slice thick for 2D models) is held out and a one-cell guard ring around it is used by
neither side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..base.inputs import Context, InputSpec, network_input, plane_axes, read_target
from ..base.normalization import Normalization
from ..errors import NapariMsdError

CELL = 32
IGNORE = -1  # target value of pixels that do not count in the loss
MAX_CLASSES = 63  # highest class label trained on; a higher value almost always means an image was given as labels


class TrainingDataError(NapariMsdError):
    """Training data the engine cannot use; the message is one line saying what to do."""


@dataclass
class TrainingData:
    """One image with its labels (same shape, YX or ZYX; numpy, dask or zarr)."""

    image: Any
    labels: Any
    name: str = "image"


@dataclass
class LabelIndex:
    """Labeled pixels of one :class:`TrainingData`, split into training and validation."""

    data: TrainingData
    cell: tuple[int, ...]
    train: dict[int, np.ndarray] = field(default_factory=dict)  # class -> (M, ndim) coordinates
    val: dict[int, np.ndarray] = field(default_factory=dict)
    excluded: np.ndarray | None = None  # cell grid: True where labels must not train (held-out cells + guard)
    val_points: np.ndarray | None = None  # (M, ndim) every held-out pixel, masked out of training patches

    def count(self, which: str = "train") -> dict[int, int]:
        return {c: len(v) for c, v in getattr(self, which).items()}


def _slab_rows(labels: Any) -> int:
    chunks = getattr(labels, "chunks", None)
    if chunks and isinstance(chunks[0], int):
        return max(1, chunks[0])
    if chunks and isinstance(chunks[0], tuple):  # dask
        return max(1, chunks[0][0])
    return max(1, int(2**24 // max(1, int(np.prod(labels.shape[1:])))))


def scan_labels(
    labels: Any, max_per_class: int = 2_000_000, seed: int = 0, name: str = "labels"
) -> dict[int, np.ndarray]:
    """Coordinates of every labeled pixel by class, read slab by slab.

    A class with more than ``max_per_class`` pixels is thinned uniformly at random as the
    scan goes, so memory stays bounded on densely labeled volumes. A value above
    :data:`MAX_CLASSES` stops the scan at the first slab holding it (:class:`TrainingDataError`
    naming ``name``): those are not labels but, most likely, the image.
    """
    rng = np.random.default_rng(seed)
    kept: dict[int, list[np.ndarray]] = {}
    keep_p: dict[int, float] = {}
    counts: dict[int, int] = {}
    step = _slab_rows(labels)
    for start in range(0, labels.shape[0], step):
        block = np.asarray(labels[start : start + step])
        nz = np.nonzero(block)
        if not nz[0].size:
            continue
        values = block[nz]
        if int(values.min()) < 0:
            raise TrainingDataError(
                f"labels of {name} contain the negative value {int(values.min())}; labels are "
                f"0 = unlabeled, 1..K = classes: repaint those pixels or choose another layer"
            )
        top = int(values.max())
        if top > MAX_CLASSES:
            raise TrainingDataError(
                f"labels of {name} contain the value {top}: is this the image? labels are "
                f"0 = unlabeled, 1..K = classes; K must be below {MAX_CLASSES + 1}"
            )
        coords = np.stack(nz, axis=1).astype(np.int32)
        coords[:, 0] += start
        for c in np.unique(values):
            c = int(c)
            mine = coords[values == c]
            p = keep_p.setdefault(c, 1.0)
            if p < 1.0:
                mine = mine[rng.random(len(mine)) < p]
            kept.setdefault(c, []).append(mine)
            counts[c] = counts.get(c, 0) + len(mine)
            while counts[c] > max_per_class:  # halve the keep probability and thin what is kept
                keep_p[c] /= 2
                kept[c] = [k[rng.random(len(k)) < 0.5] for k in kept[c]]
                counts[c] = sum(len(k) for k in kept[c])
    return {c: np.concatenate(v) for c, v in sorted(kept.items()) if sum(len(k) for k in v)}


def cell_shape(ndim: int, spec: InputSpec) -> tuple[int, ...]:
    """Validation cells: 32 px in-plane; one slice thick for 2D models on volumes."""
    if ndim == 2:
        return (CELL, CELL)
    return (CELL, CELL, CELL) if spec.mode == "3d" else (1, CELL, CELL)


def _components(xy: np.ndarray, reach: int = 2, max_voxels: int = 64_000_000) -> np.ndarray | None:
    """Component id of every coordinate, pixels within ``reach`` (in-plane; 1 across slices) joined; None if huge."""
    lo = xy.min(axis=0)
    extent = xy.max(axis=0) - lo + 1
    if int(np.prod(extent.astype(np.int64))) > max_voxels:
        return None
    mask = np.zeros(tuple(extent), bool)
    local = tuple((xy - lo).T)
    mask[local] = True
    if reach > 1:  # join strokes a few pixels apart in-plane: they are not independent samples
        plane = np.ones((1,) * (xy.shape[1] - 2) + (2 * reach - 1, 2 * reach - 1), bool)
        mask = ndimage.binary_dilation(mask, structure=plane)
    components, _ = ndimage.label(mask, structure=np.ones((3,) * xy.shape[1], bool))
    return components[local]


def _hold_out_strokes(ids: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray | None:
    """Boolean held-out mask choosing whole components, or None when the class is not stroke-like."""
    sizes = np.bincount(ids)[1:]
    present = np.flatnonzero(sizes) + 1
    if len(present) < 3 or sizes.max() > 0.5 * sizes.sum():
        return None
    target, held = fraction * sizes.sum(), 0
    chosen: list[int] = []
    for comp in rng.permutation(present):
        if held >= target or len(chosen) == len(present) - 1:
            break
        size = sizes[comp - 1]
        if held and held + size > 2 * target:
            continue
        chosen.append(comp)
        held += size
    return np.isin(ids, chosen)


def split(data: TrainingData, spec: InputSpec, val_fraction: float = 0.15, seed: int = 0) -> LabelIndex:
    """Index ``data``'s labeled pixels and hold out about ``val_fraction`` of each class (module docstring).

    When holding out would leave a class without training pixels (one short stroke, say),
    this image contributes no validation pixels.
    """
    if data.labels.shape != data.image.shape:
        raise TrainingDataError(
            f"labels {tuple(data.labels.shape)} and image {tuple(data.image.shape)} of {data.name} differ in shape; "
            "paint the labels on a layer of the image's shape"
        )
    coords = scan_labels(data.labels, seed=seed, name=data.name)
    cell = cell_shape(len(data.image.shape), spec)
    grid = tuple(-(-n // c) for n, c in zip(data.image.shape, cell))
    index = LabelIndex(data, cell, train=coords, excluded=np.zeros(grid, bool))
    if not coords or val_fraction <= 0:
        return index
    rng = np.random.default_rng(seed)
    cell_ids = {c: np.ravel_multi_index(tuple((xy // np.array(cell)).T), grid) for c, xy in coords.items()}
    held: dict[int, np.ndarray] = {}
    dense = []
    for c, xy in coords.items():
        ids = _components(xy)
        mask = None if ids is None else _hold_out_strokes(ids, val_fraction, rng)
        if mask is None:
            dense.append(c)
        else:
            held[c] = mask
    val_cells = np.zeros(int(np.prod(grid)), bool)
    if dense:  # a compact block: labeled cells nearest a random one, until each dense class has its share
        per_cell = {c: np.bincount(cell_ids[c], minlength=val_cells.size) for c in dense}
        target = {c: val_fraction * len(coords[c]) for c in dense}
        count = dict.fromkeys(dense, 0)
        labeled = np.unique(np.concatenate([cell_ids[c] for c in dense]))
        position = np.stack(np.unravel_index(labeled, grid), axis=1) * np.array(cell)  # in pixels
        seed_cell = position[rng.integers(len(labeled))]
        order = np.argsort(np.linalg.norm(position - seed_cell, axis=1) + rng.random(len(labeled)), kind="stable")
        for cid in labeled[order]:
            if all(count[c] >= target[c] for c in dense):
                break
            if any(per_cell[c][cid] and count[c] < target[c] for c in dense):
                val_cells[cid] = True
                for c in dense:
                    count[c] += int(per_cell[c][cid])
    excluded = ndimage.binary_dilation(val_cells.reshape(grid), structure=np.ones((3,) * len(grid), bool))
    flat_excluded = excluded.ravel()
    train, val = {}, {}
    for c, xy in coords.items():
        in_val = held.get(c, np.zeros(len(xy), bool)) | val_cells[cell_ids[c]]
        keep = ~in_val & ~flat_excluded[cell_ids[c]]
        train[c] = xy[keep]
        if in_val.any():
            val[c] = xy[in_val]
    if any(len(v) == 0 for v in train.values()) or not val:
        return index
    index.train, index.val, index.excluded = train, val, excluded
    index.val_points = np.concatenate(list(val.values()))
    return index


def excluded_mask(index: LabelIndex, box: tuple[slice, ...]) -> np.ndarray:
    """Boolean mask over ``box`` of the pixels whose labels must not train (held out, or in a guard cell)."""
    if index.excluded is None:
        raise ValueError("the label index has no held-out cells yet: build it with sampling.split first")
    axes = [np.arange(s.start, s.stop) // c for s, c in zip(box, index.cell)]
    mask = index.excluded[np.ix_(*axes)].copy()
    if index.val_points is not None:
        lo = np.array([s.start for s in box])
        hi = np.array([s.stop for s in box])
        inside = index.val_points[np.all((index.val_points >= lo) & (index.val_points < hi), axis=1)]
        mask[tuple((inside - lo).T)] = True
    return mask


def to_target(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """napari labels (0 = unlabeled, 1..K) to loss targets (IGNORE, 0..K-1)."""
    target = labels.astype(np.int64) - 1
    target[(target < 0) | (target >= n_classes)] = IGNORE
    return target


class PatchSampler:
    """Class-balanced training patches: a class is drawn uniformly, then one of its pixels.

    The patch is centred near that pixel (jittered by up to a quarter patch), cut through a
    random orientation of ``spec``, normalised, and its labels in validation or guard cells
    are set to :data:`IGNORE`. With ``replay`` indices (earlier annotations when
    fine-tuning), a ``replay_fraction`` of patches come from them. ``context``: extra input channels
    appended to each patch (the forest's, :mod:`.context`; xy orientation only).
    """

    def __init__(
        self,
        indices: list[LabelIndex],
        spec: InputSpec,
        size: tuple[int, ...],
        n_classes: int,
        normalization: Normalization,
        seed: int = 0,
        replay: list[LabelIndex] | None = None,
        replay_fraction: float = 0.5,
        pseudo: dict | None = None,
        unpainted_fraction: float = 0.25,
        context: Context | None = None,
    ):
        self.spec, self.size, self.n_classes, self.normalization = spec, tuple(size), n_classes, normalization
        self.context = context
        self.pseudo = pseudo or {}  # teacher labels of xy planes (training.teacher): targets K..2K-1 where unpainted
        self.rng = np.random.default_rng(seed)
        self.groups = [g for g in (indices, replay or []) if any(ix.train for ix in g)]
        self.fractions = [1.0] if len(self.groups) == 1 else [1 - replay_fraction, replay_fraction]
        # planes only the teacher labeled (no stroke on them): a share of the patches comes from there
        self.unpainted = [
            (ix, z)
            for ix in indices + (replay or [])
            if len(ix.data.image.shape) == 3
            for z in self.pseudo.get(id(ix), {})
            if z is not None and not _painted(ix, z)
        ]
        self.unpainted_fraction = unpainted_fraction if self.unpainted and spec.mode != "3d" else 0.0

    def _pick(self, group: list[LabelIndex]) -> tuple[LabelIndex, np.ndarray]:
        classes = sorted({c for ix in group for c, xy in ix.train.items() if len(xy)})
        c = classes[self.rng.integers(len(classes))]
        weights = np.array([len(ix.train.get(c, ())) for ix in group], float)
        ix = group[self.rng.choice(len(group), p=weights / weights.sum())]
        coords = ix.train[c]
        return ix, coords[self.rng.integers(len(coords))]

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs (B, C, *size) float32, targets (B, *size) int64)``: targets 0..K-1 are strokes, K..2K-1 the
        teacher's labels (only with ``pseudo``), IGNORE elsewhere."""
        xs, ys = [], []
        for _ in range(batch_size):
            if self.unpainted_fraction and self.rng.random() < self.unpainted_fraction:
                ix, z = self.unpainted[self.rng.integers(len(self.unpainted))]
                center = np.array([z, *(self.rng.integers(n) for n in ix.data.image.shape[1:])])
                orientation = "xy"  # the teacher labels xy planes
            else:
                group = self.groups[self.rng.choice(len(self.groups), p=self.fractions)]
                ix, center = self._pick(group)
                orientation = self.spec.orientations[self.rng.integers(len(self.spec.orientations))]
            center = center.astype(int).copy()
            if self.spec.mode == "3d":
                jitter_axes: tuple[int, ...] = tuple(range(len(center)))
            else:
                jitter_axes = plane_axes(len(center), orientation)[0]
            for axis, s in zip(jitter_axes, self.size):
                center[axis] += int(self.rng.integers(-(s // 4), s // 4 + 1))
            x, box = network_input(
                ix.data.image, self.spec, self.normalization, center, self.size, orientation, self.context
            )
            labels = np.asarray(ix.data.labels[box]).copy()
            labels[excluded_mask(ix, box)] = 0
            y = read_target(labels, tuple(slice(0, n) for n in labels.shape), self.spec, orientation)
            target = to_target(y, self.n_classes)
            planes = self.pseudo.get(id(ix))
            if planes and orientation == "xy" and self.spec.mode != "3d":
                z = None if len(box) == 2 else box[0].start
                taught = planes.get(z)
                if taught is not None:
                    taught = taught[box[-2], box[-1]]
                    free = (target == IGNORE) & (taught > 0)
                    target[free] = taught[free].astype(np.int64) - 1 + self.n_classes
            xs.append(x)
            ys.append(target)
        return np.stack(xs), np.stack(ys)


def _painted(ix: LabelIndex, z: int) -> bool:
    """Whether plane ``z`` of a volume holds labeled pixels (training or held out)."""
    return any(len(xy) and bool((xy[:, 0] == z).any()) for group in (ix.train, ix.val) for xy in group.values())


def validation_tiles(
    indices: list[LabelIndex],
    spec: InputSpec,
    size: tuple[int, ...],
    n_classes: int,
    normalization: Normalization,
    max_tiles: int = 32,
    seed: int = 0,
    context: Context | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed ``(input, target)`` tiles covering held-out pixels (xy orientation, no augmentation; ``context``: extra
    input channels, as in :class:`PatchSampler`).

    Each tile is centred on one validation cell and scores only that cell's validation pixels,
    so a pixel is never counted twice; tiles are spread over the classes.
    """
    rng = np.random.default_rng(seed)
    candidates = []
    for ix in indices:
        for c, xy in ix.val.items():
            for cell_origin in np.unique(xy // np.array(ix.cell), axis=0):
                candidates.append((c, ix, cell_origin))
    rng.shuffle(candidates)
    by_class: dict[int, list] = {}
    for cand in candidates:
        by_class.setdefault(cand[0], []).append(cand)
    chosen: list[tuple] = []
    seen: set = set()
    while len(chosen) < max_tiles and any(by_class.values()):  # round-robin over classes
        for c in sorted(by_class):
            if by_class[c] and len(chosen) < max_tiles:
                _, ix, origin = by_class[c].pop()
                key = (id(ix), tuple(origin))
                if key not in seen:
                    seen.add(key)
                    chosen.append((ix, origin))
    tiles = []
    for ix, origin in chosen:
        cell_box = tuple(slice(o * c, min((o + 1) * c, n)) for o, c, n in zip(origin, ix.cell, ix.data.image.shape))
        lo = np.array([b.start for b in cell_box])
        hi = np.array([b.stop for b in cell_box])
        points = {c: xy[np.all((xy >= lo) & (xy < hi), axis=1)] for c, xy in ix.val.items()}
        zs = range(cell_box[0].start, cell_box[0].stop) if spec.mode != "3d" and len(ix.cell) == 3 else [None]
        for z in zs:
            center = [(b.start + b.stop) // 2 for b in cell_box]
            if z is not None:
                center[0] = z
            x, box = network_input(ix.data.image, spec, normalization, center, size, "xy", context)
            box_lo = np.array([b.start for b in box])
            box_hi = np.array([b.stop for b in box])
            labels = np.zeros([b.stop - b.start for b in box], np.int64)  # only this cell's held-out pixels
            for c, xy in points.items():
                xy = xy[np.all((xy >= box_lo) & (xy < box_hi), axis=1)]
                labels[tuple((xy - box_lo).T)] = c
            y = read_target(labels, tuple(slice(0, n) for n in labels.shape), spec, "xy")
            if (y > 0).any():
                tiles.append((x, to_target(y, n_classes)))
    return tiles
