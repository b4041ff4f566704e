"""Does an ensemble's disagreement find a network's errors better than one network's entropy? (issue #13)

On ISBI 2012 (``strokes.DATASETS["isbi"]``), per stroke seed, as ``stroke_benchmark.py`` sets a run up (0.1% of the
volume painted as strokes on slices 0, 14 and 29; ``TrainConfig(steps=None, time_limit=..., seed=seed,
validate_every=50, patience=0, ...)``, scored on the 27 unpainted slices):

- a random forest on ilastik's features (``stroke_benchmark.run_forest``), the paired reference;
- one MS-D (100 layers) trained ``--minutes``;
- an ensemble of ``--members`` MS-D (``training.ensemble``) trained ``--minutes`` in all (each member
  ``minutes / members``: the same CPU minutes as the one network), from seeds ``seed``, ``seed + 1``, ...

Both networks predict the unpainted slices with :class:`napari_msd.inference.Predictor` (the Predict dock's
prediction: whole planes, the default halo), the ensemble also giving its members' disagreement
(``inference.uncertainty.disagreement``, mutual information). Reported:

- **headline**: membrane IoU of each, and paired against the forest (mean difference, seeds won) as
  ``stroke_benchmark.py`` does; the ensemble also against the single network;
- **AUROC** of an uncertainty against the error map (prediction != truth, every pixel of the scored slices): how well
  it ranks wrong pixels above right ones (0.5: no better than chance), for the single network's entropy (its own
  errors), the ensemble's entropy and the ensemble's disagreement (the ensemble's errors);
- **ten jumps**: the share of the error pixels inside the first ten "Next uncertain region" regions, exactly as the
  Predict dock chooses them (``inference.uncertainty.RegionScores`` of the uint8 uncertainty layer, ``TILE`` = the
  dock's ``REVIEW_TILE`` = 128 px tiles, one slice deep), against ten random distinct tiles (the mean over
  ``--random-draws`` draws); and how many times more errors the ten jumps find than random ones.

Run (about ``2 * minutes`` of training plus prediction per seed; not a test)::

    python benchmarks/uncertainty.py --seeds 0 1 2 --minutes 5 --json uncertainty.json
    python benchmarks/uncertainty.py --seeds 0 --minutes 0.2 --crop 128       # smoke test, about two minutes
    python benchmarks/uncertainty.py --table uncertainty.json                 # the tables of an earlier run

``--crop N`` keeps the top-left N x N of every slice; ``--model-depth D`` sets the MS-D depth (default 100, the
paper's). Data are looked up in ``../shared/data/isbi2012`` beside the repository, or under ``--data-root``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stroke_benchmark import FRACTION, choose_slices, log, run_forest, score, variant_config  # noqa: E402
from strokes import DATASETS, Dataset, dataset_strokes  # noqa: E402

from napari_msd.inference import Predictor  # noqa: E402
from napari_msd.inference.uncertainty import RegionScores, entropy, to_uint8  # noqa: E402
from napari_msd.io.model_file import ModelMetadata  # noqa: E402
from napari_msd.models.ensemble import Ensemble, ensemble_config  # noqa: E402
from napari_msd.models.registry import PRESETS  # noqa: E402
from napari_msd.training.engine import Trainer  # noqa: E402
from napari_msd.training.ensemble import EnsembleTrainer  # noqa: E402
from napari_msd.training.events import MemberFinished, TrainingFinished  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402

TILE = 128  # px: the Predict dock's REVIEW_TILE, the size of the regions "Next uncertain region" visits
JUMPS = 10


# -- measures --------------------------------------------------------------------------------------------------------
def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` pixels (Mann-Whitney U, ties averaged)."""
    scores, positive = np.ravel(scores), np.ravel(positive).astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def review_scores(u8: np.ndarray) -> RegionScores:
    """The Predict dock's review queue of a uint8 uncertainty volume of the scored slices, filled block by block as
    it fills it (here one plane per block)."""
    scores = RegionScores(u8.shape, tile=TILE)
    for z in range(u8.shape[0]):
        scores.add((slice(z, z + 1), slice(0, u8.shape[1]), slice(0, u8.shape[2])), u8[z : z + 1])
    return scores


def jumps_share(u8: np.ndarray, errors: np.ndarray, jumps: int = JUMPS) -> float:
    """The share of the error pixels inside the first ``jumps`` regions "Next uncertain region" visits."""
    scores = review_scores(u8)
    found = 0
    for _ in range(jumps):
        region = scores.next_region()
        if region is None:
            break
        found += int(errors[region].sum())
    return found / max(int(errors.sum()), 1)


def random_share(errors: np.ndarray, draws: int, seed: int, jumps: int = JUMPS) -> float:
    """The mean share of the error pixels inside ``jumps`` distinct random review tiles, over ``draws`` draws."""
    z, y, x = errors.shape
    ty, tx = -(-y // TILE), -(-x // TILE)
    per_tile = np.zeros((z, ty, tx), np.int64)
    for i in range(ty):
        for j in range(tx):
            per_tile[:, i, j] = errors[:, i * TILE : (i + 1) * TILE, j * TILE : (j + 1) * TILE].sum(axis=(1, 2))
    flat = per_tile.ravel()
    rng = np.random.default_rng(seed)
    total = max(int(errors.sum()), 1)
    n = min(jumps, flat.size)
    return float(np.mean([flat[rng.choice(flat.size, n, replace=False)].sum() / total for _ in range(draws)]))


# -- runs ------------------------------------------------------------------------------------------------------------
def train(trainer: Any) -> dict:
    """Run a Trainer or EnsembleTrainer; its figures."""
    start = time.perf_counter()
    finished, members = None, []
    for event in trainer.run():
        if isinstance(event, TrainingFinished):
            finished = event
        elif isinstance(event, MemberFinished):
            members.append({"member": event.member, "kept": event.kept, "steps": event.steps, "why": event.why})
    assert finished is not None
    return {
        "train_s": time.perf_counter() - start,
        "steps": finished.steps,
        "collapsed": finished.collapsed,
        "effective_halo": finished.effective_halo,
        "members": members or None,
    }


def as_trained(trainer: EnsembleTrainer) -> tuple[Ensemble, ModelMetadata]:
    """The ensemble of every member trained, those the engine left out (collapsed) included: scored as it is, as
    ``stroke_benchmark.py`` scores a collapsed network (marked †)."""
    if not trainer.left_out_networks:
        return trainer.snapshot(), trainer.metadata()
    indices = [m for m in range(trainer.n_members) if m not in trainer.left_out]  # the kept, in order
    kept = dict(zip(indices, trainer.snapshot().members)) if trainer.n_kept else {}
    networks = {**kept, **{m: net for m, (net, _) in trainer.left_out_networks.items()}}
    ensemble = Ensemble.of([networks[m] for m in sorted(networks)]).eval()
    some = next(iter(trainer.left_out_networks.values()))[1]
    meta = dataclasses.replace(
        some, arch="ensemble", config=ensemble.config(), receptive_field=ensemble.receptive_field, effective_halo=None
    )
    return ensemble, meta


def predict(model, meta, image: np.ndarray, scored: list[int], members: bool) -> dict[str, np.ndarray]:
    """Labels, probabilities and (an ensemble's) disagreement of the ``scored`` slices, block by block as the Predict
    dock predicts (whole planes, the default halo)."""
    predictor = Predictor(model, meta)
    shape = image.shape
    labels = np.zeros(shape, np.uint8)
    probs = np.zeros((predictor.n_classes, *shape), np.float32)
    dis = np.zeros(shape, np.float32) if members else None
    for done in predictor.blocks(image, disagreement=members):
        labels[done.block.out] = done.labels
        probs[(slice(None), *done.block.out)] = done.probabilities
        if dis is not None:
            dis[done.block.out] = done.disagreement
    out = {"labels": labels[scored], "probabilities": probs[:, scored]}
    if dis is not None:
        out["disagreement"] = dis[scored]
    return out


def uncertainty_rows(name: str, u: np.ndarray, errors: np.ndarray, seed: int, draws: int) -> dict:
    u8 = to_uint8(u)
    share = jumps_share(u8, errors)
    random = random_share(errors, draws, seed)
    return {
        "uncertainty": name,
        "auroc": auroc(u, errors),
        "jumps_share": share,
        "random_share": random,
        "gain": share / random if random > 0 else math.nan,
        "error_pixels": int(errors.sum()),
    }


def run_seed(ds: Dataset, image, labels, scored, truth, seed: int, args) -> tuple[list[dict], list[dict]]:
    strokes, _, _ = dataset_strokes(ds, labels, seed=seed, fraction=FRACTION)
    log(f"seed {seed}: {int((strokes > 0).sum()):,} stroke px")
    rows = [{"seed": seed, **run_forest(ds, image, strokes, scored, truth, seed)}]
    log(f"seed {seed}: forest {ds.headline_label} {rows[0]['headline']:.3f}")
    data = [TrainingData(image, strokes, ds.key)]
    config = variant_config(ds, "msd", {}, args.minutes * 60, seed, args.model_depth)
    member = {**PRESETS["msd"], **config.model}
    ensemble_cfg = dataclasses.replace(config, arch="ensemble", model=ensemble_config("msd", member, args.members))
    measures = []
    for method, make in (
        ("MS-D", lambda: Trainer(data, config)),
        (f"ensemble of {args.members} MS-D", lambda: EnsembleTrainer(data, ensemble_cfg)),
    ):
        trainer = make()
        figures = train(trainer)
        is_ensemble = isinstance(trainer, EnsembleTrainer)
        model, meta = as_trained(trainer) if is_ensemble else (trainer.snapshot(), trainer.metadata())
        start = time.perf_counter()
        out = predict(model, meta, image, scored, is_ensemble)
        predict_s = time.perf_counter() - start
        result = score(ds, truth, out["labels"])
        rows.append({"seed": seed, "method": method, "kind": "network", **figures, **result, "predict_s": predict_s})
        log(
            f"seed {seed}: {method} {ds.headline_label} {result['headline']:.3f} ({figures['steps']} steps in "
            f"{figures['train_s']:.0f} s, predicted in {predict_s:.0f} s)"
            + (f"; COLLAPSED: {figures['collapsed']}" if figures["collapsed"] else "")
        )
        errors = out["labels"] != truth
        kinds = {"entropy": entropy(out["probabilities"])}
        if is_ensemble:
            kinds["disagreement"] = out["disagreement"]
        for name, u in kinds.items():
            m = {"seed": seed, "method": method, **uncertainty_rows(name, u, errors, seed, args.draws)}
            measures.append(m)
            log(
                f"seed {seed}: {method} {m['uncertainty']}: AUROC {m['auroc']:.3f}, ten jumps find "
                f"{100 * m['jumps_share']:.1f}% of the errors (random {100 * m['random_share']:.1f}%)"
            )
    return rows, measures


# -- tables ----------------------------------------------------------------------------------------------------------
def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def _f(v: float, fmt: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _paired(a: dict[int, float], b: dict[int, float]) -> str:
    seeds = [s for s in a if s in b]
    if not seeds:
        return "-"
    diffs = [a[s] - b[s] for s in seeds]
    return f"{np.mean(diffs):+.3f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"


def table(state: dict) -> str:
    info, rows, measures = state["info"], state["rows"], state["measures"]
    seeds = sorted({r["seed"] for r in rows})
    out = [
        f"**ISBI 2012** ({' x '.join(map(str, info['shape']))}"
        + (f", top-left crop {info['crop']}" if info.get("crop") else "")
        + f"): strokes seeds {', '.join(map(str, seeds))}; each network trained {info['minutes']:g} min in all "
        f"(the ensemble's {info['members']} members {info['minutes'] / info['members']:g} min each); scored on "
        f"{len(info['scored'])} unpainted slices.",
        "",
        f"| method | training | {info['headline']}, seed {' / '.join(map(str, seeds))} | mean | vs forest (paired) "
        "| vs one MS-D (paired) |",
        "|---|---|---|---|---|---|",
    ]
    by_method: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {})[r["seed"]] = r
    forest = {r["seed"]: r["headline"] for r in rows if r["kind"] == "forest"}
    single = {r["seed"]: r["headline"] for r in rows if r["method"] == "MS-D"}
    for method, runs in by_method.items():
        heads = {s: r["headline"] for s, r in runs.items()}
        kind = next(iter(runs.values()))["kind"]
        steps = [r["steps"] for r in runs.values() if r.get("steps")]
        training = f"{_mean([r['train_s'] for r in runs.values()]):.0f} s" + (
            (f", {min(steps)}-{max(steps)} steps" if min(steps) < max(steps) else f", {steps[0]} steps")
            if steps
            else ""
        )
        collapsed = any(r.get("collapsed") for r in runs.values())
        out.append(
            f"| {method}{' †' if collapsed else ''} | {training} | "
            + " / ".join(_f(heads.get(s)) for s in seeds)
            + f" | {_f(_mean(heads.values()))} | "
            + ("-" if kind == "forest" else _paired(heads, forest))
            + " | "
            + ("-" if kind == "forest" or method == "MS-D" else _paired(heads, single))
            + " |"
        )
    out += [
        "",
        f"| uncertainty (errors of) | AUROC vs errors, mean (seeds) | errors in the first {JUMPS} jumps | "
        f"{JUMPS} random tiles | jumps / random |",
        "|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((m["method"], m["uncertainty"]) for m in measures):
        ms = [m for m in measures if (m["method"], m["uncertainty"]) == key]
        out.append(
            f"| {key[0]} {key[1]} | {_f(_mean([m['auroc'] for m in ms]))} ("
            + " / ".join(_f(m["auroc"]) for m in ms)
            + f") | {100 * _mean([m['jumps_share'] for m in ms]):.1f}% | "
            f"{100 * _mean([m['random_share'] for m in ms]):.1f}% | {_f(_mean([m['gain'] for m in ms]), '.2f')}x |"
        )
    out += [
        "",
        "AUROC: how well the uncertainty ranks wrong pixels above right ones (0.5 = chance), over every pixel of the "
        "scored slices. Jumps: the share of that network's error pixels inside the first ten regions 'Next uncertain "
        f"region' visits ({TILE} px tiles, one slice deep), against ten random tiles (mean of "
        f"{info['draws']} draws). † a network the engine judged collapsed, scored as is.",
    ]
    return "\n".join(out)


def save(state: dict, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(state, indent=1, default=float))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="stroke and training seeds")
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes per method (default 5)")
    parser.add_argument("--members", type=int, default=3, help="the ensemble's members (default 3)")
    parser.add_argument("--crop", type=int, help="keep the top-left N x N of every slice")
    parser.add_argument("--model-depth", type=int, help="MS-D depth (default 100)")
    parser.add_argument("--draws", type=int, default=200, help="random jump sets averaged (default 200)")
    parser.add_argument("--data-root", type=Path, help="the folder holding isbi2012/")
    parser.add_argument("--json", type=Path, help="write every figure here (rewritten after every seed)")
    parser.add_argument("--table", type=Path, help="print the tables of an earlier --json run and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    ds = DATASETS["isbi"]
    image, labels = ds.load(args.data_root)
    if args.crop:
        image, labels = image[:, : args.crop, : args.crop].copy(), labels[:, : args.crop, : args.crop].copy()
    _, scored = choose_slices(ds, labels.shape[0], 0, 0, False)
    truth = labels[scored]
    state: dict[str, Any] = {
        "info": {
            "shape": list(labels.shape),
            "crop": args.crop,
            "scored": scored,
            "minutes": args.minutes,
            "members": args.members,
            "draws": args.draws,
            "headline": ds.headline_label,
            "model_depth": args.model_depth,
        },
        "rows": [],
        "measures": [],
    }
    log(f"ISBI {labels.shape}: painted {list(ds.slices)}, scored {len(scored)} slices")
    for seed in args.seeds:
        rows, measures = run_seed(ds, image, labels, scored, truth, seed, args)
        state["rows"] += rows
        state["measures"] += measures
        save(state, args.json)
    print(table(state))


if __name__ == "__main__":
    main()
