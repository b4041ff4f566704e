"""How the default network's quality grows with training steps: the headline IoU on the unpainted slices at fixed
step counts of one run, as trained and after the class-prior correction (forced), with the step held-out strokes
would pick and whether the engine would refuse the correction (it all but erases a painted class).

Answers whether a faster training step buys quality at the same minutes (it does only while the curve still rises).
Fixed steps, so another process on the machine slows it without changing the figures.

    python benchmarks/learning_curve.py --datasets isbi vnc --seeds 0 --steps 2400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stroke_benchmark import DATA_ROOT, DATASETS, FRACTION, choose_slices, dataset_strokes, evaluate, variant_config  # noqa: E402

from napari_msd.training.engine import Trainer  # noqa: E402
from napari_msd.training.events import Validated  # noqa: E402
from napari_msd.training.prior import erased_classes, estimate_prior, shift_output_bias  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402

MILESTONES = (150, 300, 600, 900, 1200, 1800, 2400, 3600, 4800)


def curve(key: str, seed: int, steps: int, data_root: Path, milestones=MILESTONES) -> list[dict]:
    """One run of the default MS-D to ``steps``; a row per milestone reached."""
    ds = DATASETS[key]
    image, labels = ds.load(data_root)
    _, scored = choose_slices(ds, labels.shape[0], 0, 5, False)
    truth = labels[scored]
    strokes, _, _ = dataset_strokes(ds, labels, seed=seed, fraction=FRACTION)
    config = variant_config(ds, "msd", {}, 60.0, seed, None)
    config = dataclasses.replace(config, steps=steps, time_limit=None, measure_halo=False, prior_correction=False)
    trainer = Trainer([TrainingData(image, strokes, key)], config)
    rows = []
    for event in trainer.run():
        if not (isinstance(event, Validated) and event.step in milestones):
            continue
        model, meta = trainer.snapshot(), trainer.metadata()
        raw = evaluate(ds, model, meta, image, scored, truth)
        uniform = np.full(trainer.n_classes, 1.0 / trainer.n_classes)
        windows = np.concatenate(trainer._window_probabilities(), axis=1)
        prior = estimate_prior(windows, uniform)
        shift = shift_output_bias(model, prior, uniform)
        erased = [ds.names[c - 1] for c in erased_classes(windows, shift, sorted(trainer.counts))]
        corrected = evaluate(ds, model, meta, image, scored, truth)
        row = {
            "dataset": key,
            "seed": seed,
            "step": event.step,
            "held_out": event.score,
            "best_step": trainer.best_step,
            "raw": raw["headline"],
            "prior": corrected["headline"],
            "erased": erased,  # painted classes the correction all but erases on the windows: the engine refuses it
            "engine": raw["headline"] if erased else corrected["headline"],
            "iou": corrected["iou"],
            "raw_iou": raw["iou"],
            "class_prior": dict(zip(ds.names, map(float, prior))),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    keys = sorted({(r["dataset"], r["seed"]) for r in rows})
    steps = sorted({r["step"] for r in rows})
    head = "| data set, seed | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [head, "|---|" + "---|" * len(steps)]
    for key, seed in keys:
        got = {r["step"]: r for r in rows if r["dataset"] == key and r["seed"] == seed}
        cells = [_cell(got[s]) if s in got else "" for s in steps]
        lines.append(f"| {DATASETS[key].title}, {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        "\n\nheadline IoU on the unpainted slices after the prior correction (as trained); "
        "refused: the correction would all but erase a painted class (training.prior.erased_classes), so the engine "
        "keeps the network as trained"
    )


def _cell(row: dict) -> str:
    refused = f", refused: erases {', '.join(row['erased'])}" if row.get("erased") else ""
    return f"{row['prior']:.3f} ({row['raw']:.3f}{refused})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["isbi", "vnc"], choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument(
        "--at", type=int, nargs="+", default=list(MILESTONES), help="the step counts scored (multiples of 50)"
    )
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = [
        row
        for key in args.datasets
        for seed in args.seeds
        for row in curve(key, seed, args.steps, args.data_root, args.at)
    ]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
