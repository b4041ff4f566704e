"""Make the sample data shipped with napari-msd: ``src/napari_msd/data/isbi_sample.npz``.

Source: the ISBI 2012 challenge training set, "Segmentation of neuronal structures in EM stacks"
(serial-section TEM of the Drosophila first instar larva ventral nerve cord, Cardona et al. 2010;
Arganda-Carreras et al., Front. Neuroanat. 2015). Labels: 1 = membrane, 2 = cell interior.

The file holds a crop of ``--slices`` slices x ``--size`` x ``--size`` pixels:

- ``image``: the EM crop, uint8 (Z, Y, X);
- ``ground_truth``: the dense labels of the crop, uint8;
- ``strokes``: sparse example strokes, uint8, 0 = unlabeled, on ``--stroke-slices`` only, made the way a
  user paints and the same way as the benchmarks' strokes (``benchmarks/isbi_strokes.py:make_strokes``):
  30-80 px pieces of the skeleton of each (eroded) class region painted with a 3 px brush, class-balanced,
  ``--coverage`` (1.5%) of the pixels of each painted slice. Every stroke pixel lies on ground truth of its class;
- ``class_names``, ``stroke_slices``, ``origin`` (crop corner in the source volume), ``source`` (credit).

Usage::

    python scripts/make_sample_data.py train-volume.tif train-labels.tif [-o src/napari_msd/data/isbi_sample.npz]

Deterministic for given arguments (``--seed``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.isbi_strokes import make_strokes  # noqa: E402  (repository-level helper, not packaged)

CLASS_NAMES = ("membrane", "cell interior")
SOURCE = (
    "ISBI 2012 EM segmentation challenge training set (Drosophila first instar larva VNC, serial-section TEM; "
    "Cardona et al. 2010; Arganda-Carreras et al., Front. Neuroanat. 2015)"
)


def make_sample(
    volume: np.ndarray,
    labels: np.ndarray,
    z0: int = 0,
    n_slices: int = 8,
    y0: int = 128,
    x0: int = 128,
    size: int = 256,
    stroke_slices: tuple[int, ...] = (1, 6),
    coverage: float = 0.015,
    seed: int = 0,
) -> dict:
    """The arrays stored in the sample file (see the module docstring)."""
    crop = (slice(z0, z0 + n_slices), slice(y0, y0 + size), slice(x0, x0 + size))
    image = np.ascontiguousarray(volume[crop], dtype=np.uint8)
    truth = np.ascontiguousarray(labels[crop], dtype=np.uint8)
    fraction = coverage * len(stroke_slices) / n_slices  # make_strokes counts a fraction of the whole crop
    strokes, _ = make_strokes(truth, stroke_slices, fraction=fraction, seed=seed)
    return {
        "image": image,
        "ground_truth": truth,
        "strokes": strokes,
        "class_names": np.array(CLASS_NAMES),
        "stroke_slices": np.array(stroke_slices, np.int64),
        "origin": np.array([z0, y0, x0], np.int64),
        "source": np.array(SOURCE),
    }


def main(argv: list[str] | None = None) -> None:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", type=Path, help="ISBI 2012 train-volume.tif")
    parser.add_argument("labels", type=Path, help="train-labels.tif (1 = membrane, 2 = cell interior)")
    parser.add_argument("-o", "--output", type=Path, default=here / "src/napari_msd/data/isbi_sample.npz")
    parser.add_argument("--z0", type=int, default=0)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--y0", type=int, default=128)
    parser.add_argument("--x0", type=int, default=128)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stroke-slices", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--coverage", type=float, default=0.015, help="fraction of each painted slice to paint")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    volume, labels = tifffile.imread(args.volume), tifffile.imread(args.labels)
    if volume.shape != labels.shape:
        parser.error(f"volume {volume.shape} and labels {labels.shape} differ in shape")
    sample = make_sample(
        volume,
        labels,
        args.z0,
        args.slices,
        args.y0,
        args.x0,
        args.size,
        tuple(args.stroke_slices),
        args.coverage,
        args.seed,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **sample)
    painted = sample["strokes"][list(args.stroke_slices)]
    print(
        f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB): image {sample['image'].shape}, "
        f"strokes on slices {args.stroke_slices}: {np.count_nonzero(painted) / painted.size:.2%} of their pixels, "
        f"per class {[int((painted == c).sum()) for c in (1, 2)]}"
    )


if __name__ == "__main__":
    main()
