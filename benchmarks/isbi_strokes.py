"""Sparse training strokes made programmatically from the dense ISBI 2012 labels, as a user would paint them.

Choices (the benchmarks depend on them; change them only deliberately):

- Painted slices: ``(0, 14, 29)``, first, middle and last of the 30-slice stack, so the 27 unpainted slices that
  are scored lie between and beyond painted ones.
- Budget: ``fraction`` is a fraction of the *whole volume* (0.1% of 30 x 512 x 512 = 7,864 pixels), all of it on
  the painted slices: ``round(fraction * labels.size)`` split evenly over the painted slices, then evenly over the
  classes present on each slice (class-balanced, as a user paints every class about equally; membrane is ~22% of the
  pixels, so membrane is over-represented relative to its prior, as it is in real painting).
- Strokes: per class, the class mask is eroded (membrane: not at all, ``membrane_erosion=0``, a membrane is only a
  few px wide; cell interior: by ``interior_erosion=5`` px so strokes stay well inside cells), skeletonized, split
  at junctions into simple paths, those paths cut into pieces of 30-80 px, and pieces taken in random order. Each
  piece is painted with a round brush of ``brush_radius`` (``1``: 3 px wide) clipped to the class mask, point by
  point along the piece, until the class budget is met exactly (the last piece is cut short).
- Every stroke pixel carries the ground-truth class of that pixel (asserted).

Run ``python benchmarks/isbi_strokes.py [DATA_DIR]`` for statistics.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

DEFAULT_DATA_DIR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
)  # ../shared beside the repo
DEFAULT_SLICES = (0, 14, 29)
CLASS_NAMES = {1: "membrane", 2: "cell interior"}
MEMBRANE = 1


def load_isbi(data_dir: str | Path = DEFAULT_DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)``: the ISBI 2012 training volume and its dense labels (1 = membrane, 2 = cell interior)."""
    import tifffile

    data_dir = Path(data_dir)
    paths = [data_dir / "train-volume.tif", data_dir / "train-labels.tif"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"ISBI 2012 data not found: missing {', '.join(missing)}. Expected train-volume.tif and "
            f"train-labels.tif (30 x 512 x 512 uint8) in {data_dir}."
        )
    image, labels = (tifffile.imread(p) for p in paths)
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    return image, labels


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _paths(skeleton: np.ndarray) -> list[np.ndarray]:
    """The skeleton split at junctions into simple 8-connected paths, each an ordered ``(n, 2)`` array of pixels."""
    sk = skeleton.astype(bool)
    neighbours = ndi.convolve(sk.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
    simple = sk & (neighbours <= 2)  # drop junction pixels: what is left are simple paths (or loops)
    lab, n = ndi.label(simple, structure=np.ones((3, 3)))
    if n == 0:
        return []
    coords = np.argwhere(lab)
    comp = lab[tuple(coords.T)]
    order = np.argsort(comp, kind="stable")
    coords, comp = coords[order], comp[order]
    bounds = np.searchsorted(comp, np.arange(1, n + 2))
    paths = []
    for k in range(n):
        pts = coords[bounds[k] : bounds[k + 1]]
        paths.append(_order_path(pts))
    return paths


def _order_path(pts: np.ndarray) -> np.ndarray:
    """Order the pixels of a simple 8-connected path (or loop) by walking it from an end."""
    if len(pts) <= 2:
        return pts
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(pts)}
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
    nbrs = [[index[(r + dr, c + dc)] for dr, dc in offsets if (r + dr, c + dc) in index] for r, c in index]
    start = next((i for i, nb in enumerate(nbrs) if len(nb) == 1), 0)  # an end, or anywhere on a loop
    seen = np.zeros(len(pts), bool)
    walk = [start]
    seen[start] = True
    while True:
        nxt = [j for j in nbrs[walk[-1]] if not seen[j]]
        if not nxt:
            break
        walk.append(nxt[0])
        seen[nxt[0]] = True
    return pts[walk]  # pixels off the main walk (rare 8-connectivity corners) are simply not used


def _pieces(paths: list[np.ndarray], rng: np.random.Generator, min_len: int, max_len: int) -> list[np.ndarray]:
    """Cut paths into consecutive pieces of random length in ``[min_len, max_len]``; shorter remainders dropped."""
    pieces = []
    for path in paths:
        start = int(rng.integers(0, min_len)) if len(path) > max_len else 0  # do not always start at the path end
        while len(path) - start >= min_len:
            length = int(rng.integers(min_len, max_len + 1))
            pieces.append(path[start : start + length])
            start += length + int(rng.integers(5, 20))  # a gap between strokes along one path
    return pieces


def _paint_class(
    mask: np.ndarray, erosion: int, budget: int, brush_radius: int, rng: np.random.Generator, piece_len: tuple[int, int]
) -> np.ndarray:
    """Boolean strokes inside ``mask`` covering exactly ``budget`` pixels (fewer only if the mask runs out)."""
    region = ndi.binary_erosion(mask, _disk(erosion)) if erosion > 0 else mask
    pieces = _pieces(_paths(skeletonize(region)), rng, *piece_len)
    brush = np.argwhere(_disk(brush_radius)) - brush_radius
    h, w = mask.shape
    painted = np.zeros_like(mask, dtype=bool)
    count = 0
    for i in rng.permutation(len(pieces)):
        for point in pieces[i]:
            dab = point + brush
            dab = dab[(dab[:, 0] >= 0) & (dab[:, 0] < h) & (dab[:, 1] >= 0) & (dab[:, 1] < w)]
            dab = dab[mask[dab[:, 0], dab[:, 1]] & ~painted[dab[:, 0], dab[:, 1]]]  # brush clipped to the class
            if count + len(dab) > budget:
                dab = dab[: budget - count]
            painted[dab[:, 0], dab[:, 1]] = True
            count += len(dab)
            if count >= budget:
                return painted
    return painted


def _split(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` integer parts differing by at most one."""
    return [int(v) for v in np.diff(np.round(np.linspace(0, total, n + 1)).astype(int))]


def make_strokes(
    labels: np.ndarray,
    slices: Sequence[int] = DEFAULT_SLICES,
    fraction: float = 0.001,
    seed: int = 0,
    brush_radius: int = 1,
    membrane_erosion: int = 0,
    interior_erosion: int = 5,
    piece_len: tuple[int, int] = (30, 80),
) -> tuple[np.ndarray, list[int]]:
    """Sparse strokes (uint8, shape of ``labels``, 0 = unlabeled) on ``slices``, and the painted slice indices.

    ``fraction`` of the whole volume's pixels is painted, split evenly over slices and over the classes present on
    each slice (see the module docstring). Class 1 (membrane) is eroded by ``membrane_erosion`` px, every other class
    by ``interior_erosion`` px, before skeletonizing. Deterministic for a given ``seed``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {labels.shape}")
    slices = [int(s) for s in slices]
    if len(set(slices)) != len(slices) or not all(0 <= s < labels.shape[0] for s in slices):
        raise ValueError(f"slices {slices} must be distinct indices into {labels.shape[0]} slices")
    rng = np.random.default_rng(seed)
    strokes = np.zeros(labels.shape, np.uint8)
    total = round(fraction * labels.size)
    for z, slice_budget in zip(slices, _split(total, len(slices)), strict=True):
        classes = [int(c) for c in np.unique(labels[z]) if c != 0]
        shares = _split(slice_budget, len(classes))
        for c, budget in zip(classes, shares, strict=True):
            erosion = membrane_erosion if c == MEMBRANE else interior_erosion
            painted = _paint_class(labels[z] == c, erosion, int(budget), brush_radius, rng, piece_len)
            strokes[z][painted] = c
    painted = strokes != 0
    assert np.array_equal(strokes[painted], labels[painted]), "a stroke pixel disagrees with the ground truth"
    return strokes, slices


def stroke_stats(strokes: np.ndarray, slices: Sequence[int], class_names: dict[int, str] = CLASS_NAMES) -> dict:
    """Pixels and separate strokes per class per painted slice, total and fraction of the volume."""
    per_slice = {}
    for z in slices:
        row = {}
        for c in [int(c) for c in np.unique(strokes[z]) if c != 0]:
            _, n_strokes = ndi.label(strokes[z] == c, structure=np.ones((3, 3)))
            row[class_names.get(c, str(c))] = {"pixels": int((strokes[z] == c).sum()), "strokes": int(n_strokes)}
        per_slice[int(z)] = row
    total = int((strokes != 0).sum())
    return {"per_slice": per_slice, "total_pixels": total, "fraction_of_volume": total / strokes.size}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _, labels = load_isbi(argv[0] if argv else DEFAULT_DATA_DIR)
    strokes, slices = make_strokes(labels)
    stats = stroke_stats(strokes, slices)
    print(f"painted slices: {slices}")
    for z, row in stats["per_slice"].items():
        parts = ", ".join(f"{name}: {v['pixels']} px in {v['strokes']} strokes" for name, v in row.items())
        print(f"  slice {z:2d}: {parts}")
    print(
        f"total: {stats['total_pixels']} px = {100 * stats['fraction_of_volume']:.4f}% of the volume "
        f"({labels.shape[0]} x {labels.shape[1]} x {labels.shape[2]}), "
        f"{100 * stats['total_pixels'] / (len(slices) * labels[0].size):.3f}% of the painted slices"
    )


if __name__ == "__main__":
    main()
