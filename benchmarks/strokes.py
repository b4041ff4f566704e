"""Sparse training strokes and proofreading corrections made programmatically from dense labels, for any data set.

This generalizes ``isbi_strokes.make_strokes`` (kept, unchanged) to every data set in :data:`DATASETS`; on ISBI 2012
with the default arguments it paints exactly the same strokes (same random draws, same pixels).

Initial strokes (:func:`make_strokes`), choices per data set in :data:`DATASETS`:

- Painted slices: ISBI ``(0, 14, 29)`` (first, middle and last of 30), VNC ``(0, 9, 19)`` (first, middle, last of 20).
- Budget: ``round(fraction * volume)`` pixels (``fraction=0.001``: 0.1% of the whole volume), split evenly over the
  painted slices, then evenly over the classes present on each slice (class-balanced, as a user paints). A class
  whose (eroded) mask runs out of stroke paths leaves the rest of its share unused (not moved to other classes);
  the shortfall is returned, so a benchmark can report it.
- Strokes per class: the class mask eroded by the data set's per-class erosion (thin classes, membranes and
  synapses, not at all; ISBI cell interior and VNC cytoplasm by 5 px; VNC mitochondria by 2 px), skeletonized, split
  at junctions, cut into pieces taken in random order, each painted with a round brush of radius 1 (3 px wide)
  clipped to the class mask, until the share is met exactly. Pieces are 30-80 px long on ISBI; on VNC 10-80 px, as a
  user dabs short strokes on small objects: with ISBI's 30 px minimum the skeleton paths of VNC's mitochondria and
  synapses are mostly too short to give a piece (stroke seed 0 paints 14,560 px instead of 17,289 px; synapses get
  670 instead of 1,892 px). Synapses still run out (about a quarter of their 3 x 1,748 px share: a 3 px brush along
  the skeleton of small blobs covers little), so VNC strokes are about 0.08%, not 0.1%, of the volume.
- Every stroke pixel carries the ground-truth class of that pixel (asserted).

Corrections (:func:`correction_strokes`), as a proofreader fixes a prediction: on the working slices, the connected
components of error (prediction != truth, on pixels not labeled yet, one component per true class), largest first;
each gets one short stroke (a piece of at most 40 px of its skeleton, brush radius 1, clipped to the component and
so to its true class) painted with the TRUE class; when every component has had one, a second round of pieces
starts, and so on until the pixel budget is met exactly (or the errors run out). Components below ``min_size``
pixels (boundary jitter a person would not paint) are left alone.

Data are looked up in ``../shared/data/<folder>`` beside the repository (``data_root`` overrides ``../shared/data``).
Run ``python benchmarks/strokes.py [isbi|vnc ...] [--data-root DIR] [--seed N]`` for statistics.

Note on VNC: the source has no mitochondrion annotation on slices 1, 7 and 18 (their mitochondria, dark as on the
neighbouring slices, are labeled cytoplasm: 43,238 of the 43,252 pixels that are mitochondrion on both slice 0 and 2
are cytoplasm on slice 1). ``Dataset.incomplete_slices`` lists them; benchmarks neither score nor correct there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_strokes import _disk, _paint_class, _paths, _split, stroke_stats  # noqa: E402

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # ../shared/data beside the repo


def _read_pair(folder: Path, image_name: str, labels_name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    paths = [folder / image_name, folder / labels_name]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{what} data not found: missing {', '.join(missing)} (see --data-root)")
    image, labels = (tifffile.imread(p) for p in paths)
    if image.shape != labels.shape:
        raise ValueError(f"{what}: image {image.shape} and labels {labels.shape} differ in shape")
    return image, labels


@dataclass(frozen=True)
class Dataset:
    """A real EM volume with dense labels, and how strokes are painted on it and results summarized."""

    key: str
    title: str
    folder: str
    files: tuple[str, str]  # image, labels (TIFF, Z x Y x X uint8)
    class_names: dict[int, str]
    slices: tuple[int, ...]  # painted slices
    erosion: dict[int, int]  # per class, px, before skeletonizing
    headline: str  # "iou:<class name>" or "mean_iou"
    piece_len: tuple[int, int] = (30, 80)  # stroke length range along the skeleton, px
    incomplete_slices: tuple[int, ...] = ()  # ground truth known to lack a class there: never scored nor corrected
    notes: tuple[str, ...] = field(default_factory=tuple)

    def load(self, data_root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        folder = Path(data_root or DATA_ROOT) / self.folder
        return _read_pair(folder, *self.files, self.title)

    @property
    def n_classes(self) -> int:
        return max(self.class_names)

    @property
    def names(self) -> list[str]:
        return [self.class_names[c] for c in range(1, self.n_classes + 1)]

    @property
    def headline_label(self) -> str:
        if self.headline == "mean_iou":
            return f"mean class IoU ({self.n_classes} classes)"
        return f"{self.headline.split(':', 1)[1]} IoU"


DATASETS: dict[str, Dataset] = {
    "isbi": Dataset(
        key="isbi",
        title="ISBI 2012",
        folder="isbi2012",
        files=("train-volume.tif", "train-labels.tif"),
        class_names={1: "membrane", 2: "cell interior"},
        slices=(0, 14, 29),
        erosion={1: 0, 2: 5},
        headline="iou:membrane",
    ),
    "vnc": Dataset(
        key="vnc",
        title="Drosophila VNC",
        folder="vnc",
        files=("volume.tif", "labels.tif"),
        class_names={1: "cytoplasm", 2: "membrane", 3: "mitochondrion", 4: "synapse"},
        slices=(0, 9, 19),
        erosion={1: 5, 2: 0, 3: 2, 4: 0},
        headline="mean_iou",
        piece_len=(10, 80),
        incomplete_slices=(1, 7, 18),
        notes=("slices 1, 7, 18 carry no mitochondrion annotation (labeled cytoplasm): never scored nor corrected",),
    ),
}


def make_strokes(
    labels: np.ndarray,
    slices: Sequence[int],
    erosion: dict[int, int] | Callable[[int], int],
    fraction: float = 0.001,
    seed: int = 0,
    brush_radius: int = 1,
    piece_len: tuple[int, int] = (30, 80),
) -> tuple[np.ndarray, list[int], list[dict]]:
    """``(strokes, slices, budgets)``: strokes (uint8, shape of ``labels``, 0 = unlabeled) on ``slices``.

    ``budgets`` has one entry per (slice, class present): ``{"slice", "class", "budget", "painted"}``; ``painted`` is
    below ``budget`` only where the class ran out of stroke paths. ``erosion`` maps a class to its erosion in px
    (classes not in a dict: 0). Deterministic for a given ``seed``; with ISBI's slices and erosion
    ``{1: 0, 2: 5}`` it equals ``isbi_strokes.make_strokes``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {labels.shape}")
    slices = [int(s) for s in slices]
    if len(set(slices)) != len(slices) or not all(0 <= s < labels.shape[0] for s in slices):
        raise ValueError(f"slices {slices} must be distinct indices into {labels.shape[0]} slices")
    erode = erosion if callable(erosion) else (lambda c: int(erosion.get(c, 0)))
    rng = np.random.default_rng(seed)
    strokes = np.zeros(labels.shape, np.uint8)
    budgets = []
    total = round(fraction * labels.size)
    for z, slice_budget in zip(slices, _split(total, len(slices)), strict=True):
        classes = [int(c) for c in np.unique(labels[z]) if c != 0]
        for c, budget in zip(classes, _split(slice_budget, len(classes)), strict=True):
            painted = _paint_class(labels[z] == c, erode(c), int(budget), brush_radius, rng, piece_len)
            strokes[z][painted] = c
            budgets.append({"slice": z, "class": c, "budget": int(budget), "painted": int(painted.sum())})
    painted = strokes != 0
    assert np.array_equal(strokes[painted], labels[painted]), "a stroke pixel disagrees with the ground truth"
    return strokes, slices, budgets


def dataset_strokes(
    dataset: Dataset | str,
    labels: np.ndarray,
    seed: int = 0,
    fraction: float = 0.001,
    slices: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[int], list[dict]]:
    """:func:`make_strokes` with the data set's painted slices and erosion."""
    ds = DATASETS[dataset] if isinstance(dataset, str) else dataset
    return make_strokes(
        labels,
        ds.slices if slices is None else slices,
        ds.erosion,
        fraction=fraction,
        seed=seed,
        piece_len=ds.piece_len,
    )


def _pieces_of(mask: np.ndarray, rng: np.random.Generator, max_len: int) -> list[np.ndarray]:
    """Short strokes along the skeleton of ``mask``: its paths, longest first, cut into pieces of <= max_len px."""
    paths = sorted(_paths(skeletonize(mask)), key=len, reverse=True)
    if not paths:  # a skeleton of junctions only (rare): its pixels, in any order
        paths = [np.argwhere(skeletonize(mask))]
    pieces = []
    for path in paths:
        start = int(rng.integers(0, max(1, min(10, len(path) - max_len + 1))))
        while start < len(path):
            pieces.append(path[start : start + max_len])
            start += max_len + int(rng.integers(5, 20))  # a gap between strokes along one path
    return pieces


def correction_strokes(
    pred: np.ndarray,
    truth: np.ndarray,
    labels: np.ndarray,
    slices: Sequence[int],
    budget: int,
    rng: np.random.Generator,
    brush_radius: int = 1,
    max_len: int = 40,
    min_size: int = 10,
) -> tuple[np.ndarray, int]:
    """``(new_labels, painted)``: ``labels`` plus proofreading strokes on the largest errors (module docstring).

    ``pred`` is the prediction of ``slices`` (shape ``(len(slices), Y, X)``, in that order; a prediction of the whole
    volume is accepted too); ``truth`` and ``labels`` are ``(Z, Y, X)``. Strokes go only where the prediction is
    wrong, the truth is a class and ``labels`` is 0, and carry the true class (asserted). ``labels`` is not changed.
    """
    truth, labels = np.asarray(truth), np.asarray(labels)
    if truth.shape != labels.shape:
        raise ValueError(f"truth {truth.shape} and labels {labels.shape} differ in shape")
    slices = [int(s) for s in slices]
    pred = np.asarray(pred)
    if pred.shape == labels.shape and len(slices) != labels.shape[0]:
        pred = pred[slices]
    if pred.shape != (len(slices), *labels.shape[1:]):
        raise ValueError(f"pred {pred.shape} is not the prediction of {len(slices)} slices of {labels.shape}")
    out = labels.copy()
    budget = int(budget)
    components = []  # (size, z, class, component id, bounding box, label image)
    for k, z in enumerate(slices):
        error = (pred[k] != truth[z]) & (labels[z] == 0) & (truth[z] != 0)
        for c in [int(c) for c in np.unique(truth[z][error])]:
            lab, n = ndi.label(error & (truth[z] == c), structure=np.ones((3, 3)))
            sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            for i, box in enumerate(ndi.find_objects(lab)):
                if sizes[i] >= min_size:
                    components.append((int(sizes[i]), z, c, i + 1, box, lab))
    components.sort(key=lambda t: (-t[0], t[1], t[2], t[3]))
    brush = np.argwhere(_disk(brush_radius)) - brush_radius
    pieces: dict[int, list[np.ndarray]] = {}
    count, round_ = 0, 0
    while count < budget:
        any_piece = False
        for j, (_, z, c, ident, box, lab) in enumerate(components):
            mask = lab[box] == ident
            if j not in pieces:
                pieces[j] = _pieces_of(mask, rng, max_len)
            if round_ >= len(pieces[j]):
                continue
            any_piece = True
            offset = np.array([box[0].start, box[1].start])
            h, w = mask.shape
            for point in pieces[j][round_]:
                dab = point + brush
                dab = dab[(dab[:, 0] >= 0) & (dab[:, 0] < h) & (dab[:, 1] >= 0) & (dab[:, 1] < w)]
                dab = dab[mask[dab[:, 0], dab[:, 1]]]  # clipped to the error component (so to its true class)
                rows, cols = dab[:, 0] + offset[0], dab[:, 1] + offset[1]
                free = out[z, rows, cols] == 0  # not labeled before, nor by an earlier dab
                rows, cols = rows[free], cols[free]
                if count + len(rows) > budget:
                    rows, cols = rows[: budget - count], cols[: budget - count]
                out[z, rows, cols] = c
                count += len(rows)
                if count >= budget:
                    break
            if count >= budget:
                break
        if not any_piece:
            break  # every error component has had all its pieces: the errors ran out
        round_ += 1
    new = (out != 0) & (labels == 0)
    assert np.array_equal(out[new], truth[new]), "a correction stroke disagrees with the ground truth"
    return out, count


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="folder holding isbi2012/ and vnc/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key in args.datasets:
        ds = DATASETS[key]
        _, labels = ds.load(args.data_root)
        strokes, slices, budgets = dataset_strokes(ds, labels, seed=args.seed)
        stats = stroke_stats(strokes, slices, ds.class_names)
        print(f"{ds.title} {labels.shape}: painted slices {slices}")
        for z, row in stats["per_slice"].items():
            parts = ", ".join(f"{name}: {v['pixels']} px in {v['strokes']} strokes" for name, v in row.items())
            print(f"  slice {z:2d}: {parts}")
        for b in budgets:
            if b["painted"] < b["budget"]:
                print(f"  short: slice {b['slice']} {ds.class_names[b['class']]}: {b['painted']} of {b['budget']} px")
        print(f"  total: {stats['total_pixels']} px = {100 * stats['fraction_of_volume']:.4f}% of the volume")
        for note in ds.notes:
            print(f"  note: {note}")


if __name__ == "__main__":
    main()
