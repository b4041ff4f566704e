"""Training from sparse strokes on ISBI 2012: MS-D and U-Net against a random-forest pixel classifier.

Strokes covering 0.1% of the volume's pixels are drawn programmatically on 3 of the 30 slices
(see ``isbi_strokes.py``). Each network trains for the same wall-clock budget on this CPU; the
random forest on ilastik-style filter features is trained on the same strokes. All three are
scored on the 27 slices that carry no stroke: membrane IoU, pixel (global) accuracy and class
accuracy against the dense ground truth. This is repeated for several stroke seeds (other strokes
on the same slices), since one draw of strokes moves every method's IoU by a few hundredths; the
networks are compared with the forest on the same strokes (paired). On ``--compare-seeds`` the
networks are also trained without the edge-aware loss (``--compare-edge-weight``, default 0), the
ablation that shows what it brings.

    python benchmarks/isbi_training.py                          # 3 stroke seeds, 5 minutes per network
    python benchmarks/isbi_training.py --compare-seeds 0 1 2    # ... and without the edge-aware loss (README)
    python benchmarks/isbi_training.py --seeds 0 --minutes 1    # a quicker, rougher run

The ISBI data is looked up in ``../shared/data/isbi2012`` beside the repository, or ``--data``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_strokes import DEFAULT_DATA_DIR, load_isbi, make_strokes  # noqa: E402
from rf_baseline import predict_rf, train_rf  # noqa: E402

from napari_msd.base.forest_channels import FittedForest  # noqa: E402
from napari_msd.base.inputs import InputSpec, network_input  # noqa: E402
from napari_msd.base.normalization import Normalization  # noqa: E402
from napari_msd.inference.flips import flip_averaged  # noqa: E402
from napari_msd.io import load_model  # noqa: E402
from napari_msd.models.forest_buffers import forest_of  # noqa: E402
from napari_msd.training import metrics  # noqa: E402
from napari_msd.training.engine import TrainConfig, Trainer  # noqa: E402
from napari_msd.training.events import TrainingFinished  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402


@torch.no_grad()
def predict_slices(
    model: torch.nn.Module,
    image: np.ndarray,
    slices: list[int],
    spec: InputSpec,
    normalization: Normalization,
    flips: bool = False,
) -> np.ndarray:
    """Whole-plane prediction of ``slices`` (labels 1..K), cut exactly as in training, with the forest's channels
    where the model takes them; ``flips``: averaged over the mirrored inputs (``inference.flips``)."""
    out = np.zeros((len(slices), *image.shape[1:]), np.uint8)
    h, w = image.shape[1:]
    buffers = forest_of(model)
    context = None if buffers is None else FittedForest.from_buffers(buffers).channels
    for k, z in enumerate(slices):
        x, _ = network_input(image, spec, normalization, (z, h // 2, w // 2), (h, w), context=context)
        xt = torch.from_numpy(x)[None]
        scores = flip_averaged(model, xt) if flips else model(xt)
        out[k] = scores.argmax(1)[0].numpy() + 1
    return out


def score(truth: np.ndarray, pred: np.ndarray) -> dict:
    cm = metrics.confusion_matrix(truth, pred, 2)
    return {
        "membrane_iou": float(metrics.iou(cm)[0]),
        "pixel_accuracy": float(metrics.global_accuracy(cm)),
        "class_accuracy": float(metrics.class_accuracy(cm)),
    }


def _evaluate(path: Path, image, test_slices, truth) -> tuple[dict, float, int]:
    model, meta = load_model(path)
    start = time.perf_counter()
    pred = predict_slices(
        model, image, test_slices, InputSpec.from_dict(meta.input), Normalization.from_dict(meta.normalization)
    )
    return score(truth, pred), time.perf_counter() - start, sum(p.numel() for p in model.parameters())


NAMES = {"msd": "MS-D (d=100, w=1)", "unet": "U-Net (depth 4, 32 base)"}


def run_network(
    arch: str, image, strokes, test_slices, truth, seconds: float, seed: int, edge_weight: float
) -> list[dict]:
    """One training run; scored as trained and after the optional class-prior correction (same weights)."""
    config = TrainConfig(
        arch=arch,
        steps=None,
        time_limit=seconds,
        seed=seed,
        validate_every=50,
        patience=0,
        prior_correction=False,  # applied below, so both variants of one training are scored
        class_names=["membrane", "cell interior"],
        edge_weight=edge_weight,
    )
    name = NAMES[arch] + (f" + edge-aware loss (weight {edge_weight:g})" if edge_weight > 0 else "")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.msd"
        trainer = Trainer([TrainingData(image, strokes, "isbi2012")], config, output=path)
        start = time.perf_counter()
        for event in trainer.run():
            if isinstance(event, TrainingFinished):
                finished = event
        train_s = time.perf_counter() - start
        common = {
            "train_s": train_s,
            "steps": finished.steps,
            "best_step": finished.best_step,
            "effective_halo": finished.effective_halo,
        }
        scores, predict_s, n_params = _evaluate(path, image, test_slices, truth)
        rows.append({"method": name, "parameters": n_params, "predict_s": predict_s, **common, **scores})
        prior = trainer.correct_prior()
        trainer.save(path, overwrite=True)
        scores, predict_s, n_params = _evaluate(path, image, test_slices, truth)
        rows.append(
            {
                "method": f"{name} + prior correction",
                "prior": None if prior is None else float(prior[0]),
                "parameters": n_params,
                "predict_s": predict_s,
                **common,
                **scores,
            }
        )
    return rows


def run_rf(image, strokes, test_slices, truth, seed: int) -> dict:
    start = time.perf_counter()
    forest = train_rf(image, strokes, seed=seed)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = predict_rf(forest, image[test_slices])
    predict_s = time.perf_counter() - start
    return {
        "method": "Random forest, ilastik features",
        "parameters": None,
        "train_s": train_s,
        "steps": None,
        "best_step": None,
        "predict_s": predict_s,
        **score(truth, pred),
    }


def table(rows: list[dict], info: dict) -> str:
    """One line per method: membrane IoU per stroke seed, means, and the mean paired difference to the forest."""
    seeds = info["seeds"]
    rf = {r["seed"]: r["membrane_iou"] for r in rows if r["parameters"] is None}
    lines = [
        f"ISBI 2012, strokes on slices {info['painted']} ({info['stroke_pixels']:,} px = "
        f"{info['stroke_fraction']:.2%} of the volume; stroke seeds {', '.join(map(str, seeds))}), "
        f"scored on the {info['n_test']} unpainted slices",
        "",
        f"| method | parameters | training | membrane IoU, seed {' / '.join(map(str, seeds))} | "
        "mean IoU | vs forest (paired) | pixel accuracy | class accuracy | prediction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        runs = {r["seed"]: r for r in rows if r["method"] == method}
        first = next(iter(runs.values()))
        params = f"{first['parameters']:,}" if first["parameters"] else "-"
        steps = [r["steps"] for r in runs.values() if r["steps"]]
        train = f"{np.mean([r['train_s'] for r in runs.values()]):.0f} s" + (
            f", {min(steps)}-{max(steps)} steps" if steps else ""
        )
        ious = " / ".join(f"{runs[s]['membrane_iou']:.3f}" if s in runs else "-" for s in seeds)
        mean = np.mean([r["membrane_iou"] for r in runs.values()])
        diffs = [runs[s]["membrane_iou"] - rf[s] for s in runs if s in rf]
        delta = (
            ""
            if first["parameters"] is None
            else f"{np.mean(diffs):+.3f} ({sum(d > 0 for d in diffs)}/{len(diffs)} better)"
        )
        lines.append(
            f"| {method} | {params} | {train} | {ious} | {mean:.3f} | {delta} | "
            f"{np.mean([r['pixel_accuracy'] for r in runs.values()]):.3f} | "
            f"{np.mean([r['class_accuracy'] for r in runs.values()]):.3f} | "
            f"{np.mean([r['predict_s'] for r in runs.values()]):.1f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="folder with train-volume.tif and labels")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per network")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="stroke seeds: each draws other strokes (and seeds the training)",
    )
    parser.add_argument("--arch", nargs="*", default=["msd", "unet"], choices=["msd", "unet"])
    parser.add_argument(
        "--edge-weight",
        type=float,
        default=TrainConfig.edge_weight,
        help="edge-aware loss weight of the networks (default: the training default)",
    )
    parser.add_argument(
        "--compare-edge-weight",
        type=float,
        default=0.0,
        help="the networks are also trained with this edge-aware loss weight on --compare-seeds",
    )
    parser.add_argument("--compare-seeds", type=int, nargs="*", default=[0], help="see --compare-edge-weight")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--table",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="only print the table of earlier --json outputs (runs split over several calls)",
    )
    args = parser.parse_args()
    if args.table:
        saved = [json.loads(p.read_text()) for p in args.table]
        info = {**saved[0]["info"], "seeds": sorted({s for d in saved for s in d["info"]["seeds"]})}
        print(table([r for d in saved for r in d["rows"]], info))
        return
    image, labels = load_isbi(args.data)
    rows, info = [], {"seeds": args.seeds, "threads": torch.get_num_threads(), "minutes": args.minutes}
    for seed in args.seeds:
        strokes, painted = make_strokes(labels, seed=seed)
        test_slices = [z for z in range(labels.shape[0]) if z not in set(painted)]
        truth = labels[test_slices]
        info.update(
            {
                "painted": list(painted),
                "stroke_pixels": int((strokes > 0).sum()),
                "stroke_fraction": float((strokes > 0).mean()),
                "n_test": len(test_slices),
            }
        )
        rows.append({**run_rf(image, strokes, test_slices, truth, seed), "seed": seed})
        print(f"seed {seed}: random forest membrane IoU {rows[-1]['membrane_iou']:.3f}", file=sys.stderr)
        weights = list(
            dict.fromkeys([args.edge_weight] + ([args.compare_edge_weight] if seed in args.compare_seeds else []))
        )
        for arch in args.arch:
            for weight in weights:
                new = run_network(arch, image, strokes, test_slices, truth, args.minutes * 60, seed, weight)
                rows += [{**r, "seed": seed} for r in new]
                print(
                    f"seed {seed}: {new[0]['method']} membrane IoU {new[0]['membrane_iou']:.3f} "
                    f"(prior-corrected {new[1]['membrane_iou']:.3f})",
                    file=sys.stderr,
                )
        if args.json:  # after every seed, so a long run that is cut short keeps what it measured
            args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    print(table(rows, info))


if __name__ == "__main__":
    main()
