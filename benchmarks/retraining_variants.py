"""What one round of corrections is worth to each way of retraining, scored on the unpainted slices whatever the
engine's keep-the-parent rules decide (the loop in ``stroke_benchmark.py --loop`` only scores kept versions).

A parent (the default MS-D, fixed steps) predicts the working slices, a proofreader's strokes correct the largest
errors (``strokes.correction_strokes``, the loop's), and each variant retrains:

* ``fine-tune``: the Train dock's Retrain (the parent fine-tuned on the corrections, the strokes replayed, the forest
  teacher fitted on the strokes); TrainConfig overrides after a colon, e.g. ``fine-tune:teacher_weight=0``;
* ``scratch-pooled``: a new network on strokes and corrections as one labels layer (the forest learns both);
* ``scratch-replay``: a new network, the corrections as data and the strokes replayed (the forest learns the strokes).

Each is scored as trained and after the class-prior correction (forced). Fixed steps: safe beside other work.

    python benchmarks/retraining_variants.py --dataset isbi --seed 0 --parent-steps 600 --round-steps 240 \\
        fine-tune "fine-tune:teacher_weight=0" scratch-pooled scratch-replay
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stroke_benchmark import (  # noqa: E402
    DATA_ROOT,
    DATASETS,
    FRACTION,
    apply_overrides,
    choose_slices,
    dataset_strokes,
    evaluate,
    parse_value,
    predict,
    variant_config,
)
from strokes import correction_strokes  # noqa: E402

from napari_msd.io import load_model  # noqa: E402
from napari_msd.training.engine import Trainer  # noqa: E402
from napari_msd.training.events import TrainingFinished, Validated  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402

KINDS = ("fine-tune", "scratch-pooled", "scratch-replay")


def parse(spec: str) -> tuple[str, str, dict]:
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise SystemExit(f"unknown variant {kind!r}: choose one of {', '.join(KINDS)} (overrides after a colon)")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    return spec, kind, overrides


def run(args: argparse.Namespace) -> list[dict]:
    ds = DATASETS[args.dataset]
    image, labels = ds.load(args.data_root)
    working, scored = choose_slices(ds, labels.shape[0], 1, 5, False)
    truth = labels[scored]
    strokes, _, _ = dataset_strokes(ds, labels, seed=args.seed, fraction=FRACTION)
    base = variant_config(ds, "msd", {}, 60.0, args.seed, None)
    base = dataclasses.replace(base, steps=args.parent_steps, time_limit=None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "parent.msd"
        for _ in Trainer([TrainingData(image, strokes, ds.key)], base, output=parent).run():
            pass
        model, meta = load_model(parent)
        rows.append({"variant": "parent", **_scores(evaluate(ds, model, meta, image, scored, truth))})
        print(json.dumps(rows[-1]), flush=True)
        rng = np.random.default_rng([args.seed, 1])
        corrected, painted = correction_strokes(
            predict(model, meta, image, working), labels, strokes, working, round(FRACTION * labels.size), rng
        )
        corrections = np.where(corrected != strokes, corrected, 0).astype(corrected.dtype)
        for spec, kind, overrides in map(parse, args.variants):
            config = dataclasses.replace(
                base,
                steps=args.round_steps if kind == "fine-tune" else args.parent_steps,
                seen_tolerance=1.0,
                prior_correction=False,
            )
            config = apply_overrides(config, overrides)
            if kind == "scratch-pooled":
                trainer = Trainer([TrainingData(image, corrected, ds.key)], config)
            else:
                trainer = Trainer(
                    [TrainingData(image, corrections, ds.key)],
                    config,
                    init=parent if kind == "fine-tune" else None,
                    replay=[TrainingData(image, strokes, ds.key)],
                )
            last, finished = None, None
            for event in trainer.run():
                if isinstance(event, Validated) and event.step > 0:
                    last = {k: v.clone() for k, v in trainer.model.state_dict().items()}
                elif isinstance(event, TrainingFinished):
                    finished = event
            with torch.no_grad():  # the last validated weights, whatever the keep-the-parent rules decided
                trainer.model.load_state_dict(last)
            raw = evaluate(ds, trainer.snapshot(), trainer.metadata(), image, scored, truth)
            prior_kept = trainer.correct_prior(max_loss=math.inf) is not None
            after = evaluate(ds, trainer.snapshot(), trainer.metadata(), image, scored, truth)
            rows.append(
                {
                    "variant": spec,
                    "raw": raw["headline"],
                    **_scores(after),
                    "prior_kept": prior_kept,
                    "engine_keeps_parent": bool(finished and finished.kept_parent),
                    "why": finished and finished.kept_parent_because,
                    "correction_pixels": painted,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _scores(result: dict) -> dict:
    return {"headline": result["headline"], "iou": result["iou"], "pred_fraction": result["pred_fraction"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help=f"{', '.join(KINDS)}, each with optional :key=value,...")
    parser.add_argument("--dataset", default="isbi", choices=list(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parent-steps", type=int, default=600, help="steps of the parent and of new networks")
    parser.add_argument("--round-steps", type=int, default=240, help="steps of a fine-tuning")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    args = parser.parse_args(argv)
    rows = run(args)
    print(f"\n| variant | {DATASETS[args.dataset].headline_label}, as trained | after the prior correction |")
    print("|---|---|---|")
    for row in rows:
        raw = f"{row['raw']:.3f}" if "raw" in row else ""
        print(f"| {row['variant']} | {raw} | {row['headline']:.3f} |")


if __name__ == "__main__":
    main()
