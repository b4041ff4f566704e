"""Random-forest speed: filter features, fit and prediction on the benchmark volumes, now and at an earlier commit.

The forest is the first answer a person sees after pressing Train, the dense teacher every default training fits
before its first step (inside the time limit), and the forest channels' input. This times, on ISBI 2012 (512^2
planes) and the Drosophila VNC volume (1024^2 planes), with stroke seed 0's strokes:

- the 49 filter features of one plane, on one thread and on the usable cores;
- the forest's fit on the strokes (100 trees) and its probabilities for one plane;
- the teacher's share of a 5-minute training: fit, then the probabilities of the painted planes.

With ``--against COMMIT`` the same steps also run with that commit's ``base/features.py`` (patched into the forest
modules), the configurations taking turns within every round in one process. The first rounds in a process can
pay for fresh memory (on some virtual machines first-touched memory is several times slower), so the first round
is a warm-up and is not counted. Run from the repository root::

    python benchmarks/forest_speed.py --against 924879d~1
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from strokes import DATA_ROOT, DATASETS, dataset_strokes  # noqa: E402

from napari_msd.base import features, forest_channels  # noqa: E402
from napari_msd.base.device import cpu_threads  # noqa: E402
from napari_msd.training import forest  # noqa: E402
from napari_msd.training.forest import PixelForest  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402

FEATURE_USERS = (forest, forest_channels)  # modules that call ``filter_features`` by their own name


def earlier_features(commit: str, into: Path) -> Callable:
    """``filter_features`` of ``commit``'s ``base/features.py``, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{commit}:src/napari_msd/base/features.py"], check=True, capture_output=True, text=True
    ).stdout
    path = into / "features_earlier.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("features_earlier", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.filter_features


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def steps(image: np.ndarray, strokes: np.ndarray, painted: list[int], plane: int) -> dict[str, Callable[[], object]]:
    """The steps timed for one data set (each a call without arguments)."""
    data = TrainingData(image, strokes, "strokes")
    fitted: dict[str, PixelForest] = {}

    def fit():
        fitted["forest"] = PixelForest.fit(data, n_estimators=100, seed=0)

    def teacher():
        fitted["forest"] = PixelForest.fit(data, n_estimators=100, seed=0)
        for z in painted:
            fitted["forest"].predict_proba(image[z])

    def features_on(threads: int) -> None:
        if "threads" in inspect.signature(forest.filter_features).parameters:
            forest.filter_features(image[plane], threads=threads)
        else:  # an earlier commit's features: one thread
            forest.filter_features(image[plane])

    return {
        "features, 1 thread": lambda: features_on(1),
        f"features, {cpu_threads()} threads": lambda: features_on(cpu_threads()),
        "fit (strokes, 100 trees)": fit,
        "probabilities of one plane": lambda: fitted["forest"].predict_proba(image[plane]),
        "teacher: fit + painted planes": teacher,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["isbi", "vnc"], choices=list(DATASETS))
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds after one warm-up (default 3)")
    parser.add_argument("--against", metavar="COMMIT", help="also time that commit's filter features")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    args = parser.parse_args()
    now = features.filter_features
    with tempfile.TemporaryDirectory() as tmp:
        configs = {"now": now}
        if args.against:
            configs = {f"features of {args.against}": earlier_features(args.against, Path(tmp)), **configs}
        rows: dict[tuple[str, str], dict[str, list[float]]] = {}
        for key in args.datasets:
            ds = DATASETS[key]
            image, labels = ds.load(args.data_root)
            strokes = dataset_strokes(ds, labels, seed=0)[0]
            plane = next(z for z in range(len(image)) if z not in ds.slices)
            cases = steps(image, strokes, list(ds.slices), plane)
            for case in cases:
                rows[(key, case)] = {name: [] for name in configs}
            for r in range(args.rounds + 1):
                for case, fn in cases.items():
                    for name, filter_features in configs.items():
                        for module in FEATURE_USERS:
                            module.filter_features = filter_features  # type: ignore[attr-defined]
                        seconds = timed(fn)
                        if r:  # the first round warms memory and caches
                            rows[(key, case)][name].append(seconds)
            print(f"{ds.title}: {image.shape[1]} x {image.shape[2]} planes, stroke seed 0", file=sys.stderr)
        for module in FEATURE_USERS:
            module.filter_features = now  # type: ignore[attr-defined]
    print(f"{describe()}; {args.rounds} interleaved rounds after a warm-up; seconds, median (best)\n")
    names = list(configs)
    print("| data set | step | " + " | ".join(names) + (" | now vs before |" if len(names) > 1 else " |"))
    print("|---|---|" + "---|" * (len(names) + (len(names) > 1)))
    for (key, case), by_name in rows.items():
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f})" for v in by_name.values()]
        if len(names) > 1:
            before, after = (statistics.median(by_name[n]) for n in names)
            cells.append(f"{before / after:.2f}x")
        print(f"| {DATASETS[key].key} | {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
