"""bfloat16 against float32 prediction: speed, and how far the answers move, on networks trained from strokes.

For each data set, the default MS-D is trained on stroke seed 0 (as the stroke benchmark paints them) for
``--steps`` steps, in float32 as always; then the unpainted slices are predicted whole in float32 and in bfloat16
(:mod:`napari_msd.models.precision`), taking turns over ``--rounds`` rounds. It prints the probe the "auto" choice
uses, both precisions' prediction seconds, the share of pixels whose label agrees, the largest difference of a class
probability, and the headline IoU of each against the truth::

    python benchmarks/precision.py                       # ISBI 2012 and VNC, 600 steps each (about 12 minutes)
    python benchmarks/precision.py --datasets isbi --steps 200
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, matmul_peak_gflops  # noqa: E402
from stroke_benchmark import FRACTION, choose_slices, score, train, variant_config  # noqa: E402
from strokes import DATA_ROOT, DATASETS, dataset_strokes  # noqa: E402

from napari_msd.base.forest_channels import FittedForest  # noqa: E402
from napari_msd.base.inputs import InputSpec, network_input  # noqa: E402
from napari_msd.base.normalization import Normalization  # noqa: E402
from napari_msd.models.forest_buffers import forest_of  # noqa: E402
from napari_msd.models.precision import bfloat16_speedup, inference_precision  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


@torch.no_grad()
def probabilities(model, meta, image: np.ndarray, slices: list[int]) -> np.ndarray:
    """Class probabilities ``(Z, K, Y, X)`` of whole ``slices``, cut as in training (the stroke benchmark's)."""
    spec, normalization = InputSpec.from_dict(meta.input or {}), Normalization.from_dict(meta.normalization)
    buffers = forest_of(model)
    context = None if buffers is None else FittedForest.from_buffers(buffers).channels
    h, w = image.shape[1:]
    out = []
    for z in slices:
        x, _ = network_input(image, spec, normalization, (z, h // 2, w // 2), (h, w), context=context)
        out.append(torch.softmax(model(torch.from_numpy(x)[None]), 1)[0].numpy())
    return np.stack(out)


def run_dataset(key: str, args) -> list[str]:
    ds = DATASETS[key]
    image, labels = ds.load(args.data_root)
    _, scored = choose_slices(ds, labels.shape[0], 0, 5, False)
    strokes, _, _ = dataset_strokes(ds, labels, seed=0, fraction=FRACTION)
    config = variant_config(ds, "msd", {}, seconds=1e9, seed=0, model_depth=None)
    config = dataclasses.replace(config, steps=args.steps, time_limit=None)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{ds.title}: training {args.steps} steps (float32) on stroke seed 0", flush=True)
        figures, model, meta = train([TrainingData(image, strokes, ds.key)], config, Path(tmp) / "model.safetensors")
    model.eval()
    truth = labels[scored]
    probs: dict[str, np.ndarray] = {}
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(args.rounds):
        for precision in PRECISIONS:
            with inference_precision(precision):
                start = time.perf_counter()
                probs[precision] = probabilities(model, meta, image, scored)
                seconds[precision].append(time.perf_counter() - start)
    labels32, labels16 = (probs[p].argmax(1) + 1 for p in PRECISIONS)
    s32, s16 = score(ds, truth, labels32.astype(np.uint8)), score(ds, truth, labels16.astype(np.uint8))
    px = truth.size / 1e6
    t32, t16 = (statistics.median(seconds[p]) for p in PRECISIONS)
    return [
        f"| {ds.title}, {len(scored)} slices, {figures['steps']} steps | {px / t32:.2f} Mpx/s ({t32:.1f} s) | "
        f"{px / t16:.2f} Mpx/s ({t16:.1f} s) | {t32 / t16:.1f}x | {np.mean(labels32 == labels16):.4%} | "
        f"{np.abs(probs['float32'] - probs['bfloat16']).max():.3f} | "
        f"{s32['headline']:.4f} / {s16['headline']:.4f} ({ds.headline_label}) |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["isbi", "vnc"], choices=sorted(DATASETS))
    parser.add_argument("--steps", type=int, default=600, help="training steps per network (default 600)")
    parser.add_argument("--rounds", type=int, default=3, help="predictions per precision, taking turns (default 3)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    args = parser.parse_args()
    rows = []
    for key in args.datasets:
        rows += run_dataset(key, args)
    print(
        f"\n{describe()}; fp32 matmul peak {matmul_peak_gflops():.0f} GFLOP/s; the probe's bfloat16 product "
        f"{bfloat16_speedup():.1f}x faster than float32 here; whole slices, median of {args.rounds} rounds\n"
    )
    print(
        "| data set | float32 | bfloat16 | speed-up | labels that agree | largest probability difference "
        "| headline IoU, float32 / bfloat16 |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
