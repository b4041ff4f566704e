"""Training from a few strokes on two real EM volumes (ISBI 2012, Drosophila VNC), against a random forest, with a
simulated proofreading loop.

What is measured, per data set and stroke seed (the seed draws other strokes on the same slices and seeds training):

- Strokes: 0.1% of the volume's pixels on three slices, class-balanced (``strokes.py``; ISBI slices 0, 14, 29, VNC
  slices 0, 9, 19; VNC's synapses run out of paths, so its strokes are about 0.08% of the volume).
- The random forest on ilastik's 49 filter features (``rf_baseline.train_rf`` / ``predict_rf``, 100 trees), timed.
- Each network variant (of ``--arch``: the network; ``ensemble`` trains its members one after another within the
  minutes, as the Train dock does) trained for ``--minutes`` of wall clock exactly as ``isbi_training.run_network`` does
  (``TrainConfig(steps=None, time_limit=..., seed=seed, validate_every=50, patience=0, class_names=...)``; also
  ``n_classes`` = the data set's classes, so a class absent from the strokes still has an output), then predicted
  whole-plane per slice with the model's input cutting and normalisation (``isbi_training.predict_slices``). The
  variant ``default`` is ``TrainConfig()``'s defaults; ``--variant "NAME:key=value,..."`` adds one that overrides
  ``TrainConfig`` fields by name (values read as int, float, bool, None or text; ``model.depth=50`` reaches into
  the ``model`` dict, ``augmentation.flips=false`` into a nested dataclass).
- Scores on the scored slices: per-class IoU, mean class IoU, pixel accuracy, class accuracy
  (``napari_msd.training.metrics``), and the predicted against the true class fractions. The headline metric is
  membrane IoU on ISBI and the mean IoU of the four classes on VNC; each network is compared with the forest trained
  on the same strokes (paired: mean difference and on how many seeds it is better).
- ``--loop K``: after its first training, each variant goes through K proofreading rounds. Working slices are the
  painted slices plus evenly spaced unpainted ones, ``--working-slices`` in all; they are excluded from scoring in
  every table of the run (round 0 and the forest included), so all rows are scored on the same slices. Each round
  predicts the working slices, paints ``--correction-budget`` pixels (default: the initial strokes' nominal budget)
  of correction strokes with the true class on the largest error components (``strokes.correction_strokes``), and
  retrains as the Train dock's Retrain does: the labels changed since the parent model's training are the data,
  the unchanged ones are replayed (``retraining.retraining_data``), the parent model is the start, and the variant's
  configuration trains for ``--round-seconds``. Round 0 is the first model on the scored slices. As in the dock,
  a retraining that collapses or does not beat its parent on the held-out labels gives no new version: the parent
  stays current (its score is the round's), and the corrections stay painted for the next Retrain from it. Each
  round also refits the forest on the same labels (strokes and that network's corrections: ilastik's loop) and
  scores it on the same slices, a row of its own under the network's.
- ``--variant "pretrained:pretrained=auto"``: the network starts from a self-supervised body
  (``napari_msd.training.pretrain``) made once per data set on the whole image, without labels, for
  ``--pretrain-minutes`` (default 5: the pretraining runs while a person paints, so its minutes are not the
  training's); every stroke seed of that data set starts from the same body, as the Train dock's per-image cache does.
- ``--prior-rows``: the networks train without the class-prior correction (a default since it won on both data
  sets), and every first network is scored as trained and again after the engine's correction (a row "... + prior";
  same weights, output bias shifted; ``prior_scale`` says how much of the estimated shift the engine applied,
  ``prior_refused`` why none). Where the engine applied less than all of it, a row "... + full prior" forces the
  full shift past the engine's rules but the collapse verdict.
- ``--flips``: every first network is also scored with its probabilities averaged over the mirrored inputs (a row
  "... + flips"; same weights; ``napari_msd.inference.flips``, 4 forward passes per plane).
- A network the engine judges collapsed (one class nearly everywhere; it saves nothing) is scored as it is,
  marked † in the table, and not taken into the loop.

Choices: the VNC ground truth lacks mitochondria on slices 1, 7 and 18 (labeled cytoplasm there), so those slices
are neither scored nor corrected (``--score-incomplete`` scores them anyway). Slices whose truth lacks a class are
otherwise scored as they are (IoU of a class absent from truth and prediction is undefined and left out of means).
The table's "max fraction error" is the largest relative error ``|predicted - true| / true`` of a class's pixel
fraction over the scored slices (classes present in the truth), averaged over seeds.

    python benchmarks/stroke_benchmark.py --datasets isbi vnc --seeds 0 1 2 --minutes 5 --json strokes.json
    python benchmarks/stroke_benchmark.py --datasets vnc --seeds 0 1 2 --minutes 5 --variant "no edge:edge_weight=0"
    python benchmarks/stroke_benchmark.py --datasets isbi vnc --seeds 0 1 2 --minutes 5 \\
        --loop 3 --round-seconds 120 --working-slices 5 --json loop.json
    python benchmarks/stroke_benchmark.py --datasets isbi vnc --seeds 0 1 --minutes 5 --arch munet  # or gated_unet,
                                                                          # unet, ensemble (3 MS-D, one after another)
    python benchmarks/stroke_benchmark.py --table isbi.json vnc.json     # tables of earlier runs, merged
    python benchmarks/stroke_benchmark.py --datasets isbi vnc --seeds 0 --minutes 0.1 --crop 128 \\
        --model-depth 10 --loop 1 --round-seconds 5                        # smoke test, about two minutes

``--crop N`` keeps the top-left N x N of every slice (budgets then follow the cropped volume); ``--model-depth D``
overrides the network depth (MS-D layers, U-Net levels). Data are looked up in ``../shared/data/{isbi2012,vnc}``
beside the repository, or under ``--data-root``. The JSON (``--json``) is rewritten after every trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_training import predict_slices  # noqa: E402
from rf_baseline import predict_rf, train_rf  # noqa: E402
from strokes import DATA_ROOT, DATASETS, Dataset, correction_strokes, dataset_strokes  # noqa: E402

from napari_msd.base.inputs import InputSpec  # noqa: E402
from napari_msd.base.normalization import Normalization  # noqa: E402
from napari_msd.io import load_model  # noqa: E402
from napari_msd.training import metrics  # noqa: E402
from napari_msd.training import prior as prior_module  # noqa: E402
from napari_msd.training.engine import TrainConfig, Trainer  # noqa: E402
from napari_msd.training.ensemble import make_trainer  # noqa: E402
from napari_msd.training.events import TrainingFinished, Validated  # noqa: E402
from napari_msd.training.retraining import retraining_data  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402

ARCH_NAMES = {
    "msd": "MS-D",
    "unet": "U-Net",
    "munet": "MUNet",
    "gated_unet": "gated U-Net",
    "ensemble": "ensemble of 3 MS-D",
}
FOREST = "Random forest (ilastik features)"
FRACTION = 0.001  # of the volume's pixels, painted as initial strokes


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- variants ------------------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` / ``"false"`` -> bool, ``"none"`` -> None, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME:key=value,key=value"`` -> ``(NAME, {key: value})``; ``"NAME"`` alone has no overrides."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"variant {spec!r}: {item!r} is not key=value")
        overrides[key.strip()] = parse_value(value)
    return name.strip() or spec, overrides


def apply_overrides(obj: Any, overrides: dict[str, Any]) -> Any:
    """A copy of ``obj`` (a dataclass or dict) with the dotted fields of ``overrides`` set; the fields of one nested
    dataclass change together (``input.mode=2.5d,input.slices=3`` passes its checks only that way)."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        groups.setdefault(head, {})[rest] = value
    names = None if isinstance(obj, dict) else {f.name for f in dataclasses.fields(obj)}  # a dict takes any key
    changes = {}
    for head, sub in groups.items():
        if names is not None and head not in names:
            raise SystemExit(f"{type(obj).__name__} has no field {head!r}; fields: {', '.join(sorted(names))}")
        if "" in sub and len(sub) > 1:
            raise SystemExit(f"{head!r} is set both whole and by its fields")
        current = obj.get(head, {}) if isinstance(obj, dict) else getattr(obj, head)
        changes[head] = sub[""] if "" in sub else apply_overrides(current, sub)
    return {**obj, **changes} if isinstance(obj, dict) else dataclasses.replace(obj, **changes)


def variant_config(
    ds: Dataset,
    arch: str,
    overrides: dict[str, Any],
    seconds: float,
    seed: int,
    model_depth: int | None,
    prior_rows: bool = False,
) -> TrainConfig:
    config = TrainConfig(
        arch=arch,
        steps=None,
        time_limit=seconds,
        seed=seed,
        validate_every=50,
        patience=0,
        class_names=ds.names,
        n_classes=ds.n_classes,
        **({"prior_correction": False} if prior_rows else {}),
    )  # the "+ prior" row applies it
    if model_depth:
        config = dataclasses.replace(config, model={**config.model, "depth": model_depth})
    config = apply_overrides(config, overrides)
    config.check()
    return config


# -- scoring ---------------------------------------------------------------------------------------------------------
def score(ds: Dataset, truth: np.ndarray, pred: np.ndarray) -> dict:
    cm = metrics.confusion_matrix(truth, pred, ds.n_classes)
    per_class = metrics.iou(cm)
    defined = per_class[~np.isnan(per_class)]
    mean_iou = float(defined.mean()) if defined.size else math.nan
    total = cm.sum()
    true_fraction, pred_fraction = cm.sum(axis=1) / total, cm.sum(axis=0) / total
    errors = [abs(p - t) / t for p, t in zip(pred_fraction, true_fraction) if t > 0]
    iou = {name: float(v) for name, v in zip(ds.names, per_class)}
    headline = mean_iou if ds.headline == "mean_iou" else iou[ds.headline.split(":", 1)[1]]
    return {
        "headline": headline,
        "iou": iou,
        "mean_iou": mean_iou,
        "pixel_accuracy": metrics.global_accuracy(cm),
        "class_accuracy": metrics.class_accuracy(cm),
        "true_fraction": dict(zip(ds.names, map(float, true_fraction))),
        "pred_fraction": dict(zip(ds.names, map(float, pred_fraction))),
        "max_fraction_error": float(max(errors)) if errors else math.nan,
    }


def predict(model: torch.nn.Module, meta, image: np.ndarray, slices: list[int], flips: bool = False) -> np.ndarray:
    return predict_slices(
        model.eval(),
        image,
        slices,
        InputSpec.from_dict(meta.input or {}),
        Normalization.from_dict(meta.normalization),
        flips=flips,
    )


def evaluate(
    ds: Dataset,
    model: torch.nn.Module | None,
    meta,
    image: np.ndarray,
    slices: list[int],
    truth: np.ndarray,
    flips: bool = False,
) -> dict:
    if model is None:  # no network came out (an ensemble whose every member collapsed): every figure undefined
        nan = {name: math.nan for name in ds.names}
        return {
            **{key: math.nan for key in ("headline", "mean_iou", "pixel_accuracy", "class_accuracy")},
            **{"iou": nan, "true_fraction": nan, "pred_fraction": nan, "max_fraction_error": math.nan},
            **{"predict_s": 0.0, "parameters": None},
        }
    start = time.perf_counter()
    pred = predict(model, meta, image, slices, flips)
    return {
        **score(ds, truth, pred),
        "predict_s": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# -- runs ------------------------------------------------------------------------------------------------------------
def run_forest(ds: Dataset, image, strokes, scored, truth, seed: int) -> dict:
    start = time.perf_counter()
    forest = train_rf(image, strokes, seed=seed)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = predict_rf(forest, image[scored])
    predict_s = time.perf_counter() - start
    return {
        "method": FOREST,
        "kind": "forest",
        "variant": None,
        "parameters": None,
        "train_s": train_s,
        "steps": None,
        "best_step": None,
        **score(ds, truth, pred),
        "predict_s": predict_s,
    }


def train(
    data: list[TrainingData],
    config: TrainConfig,
    output: Path,
    init: Path | None = None,
    replay: list[TrainingData] = (),
    keep: list | None = None,
) -> tuple[dict, torch.nn.Module, Any]:
    """Run a Trainer into ``output``; its figures, and the resulting network and metadata (in memory).

    ``figures["version"]`` is False where the Train dock would offer no new version: the network collapsed (the
    engine then saves nothing; the weights returned are the collapsed ones, so they can still be scored) or, when
    fine-tuning, it never beat the parent (``kept_parent``).
    """
    trainer = make_trainer(data, config, init=init, replay=replay, output=output)
    if keep is not None:
        keep.append(trainer)
    finished, validations = None, []
    start = time.perf_counter()
    for event in trainer.run():
        if isinstance(event, TrainingFinished):
            finished = event
        elif isinstance(event, Validated):  # step 0 of a fine-tuning is the parent's score: the bar to beat
            validations.append(
                {
                    "step": event.step,
                    "score": event.score,
                    "collapsed": event.collapsed,
                    "replay_class_accuracy": event.metrics.get("replay_class_accuracy"),
                }
            )
    collapsed = getattr(finished, "collapsed", None)
    kept_parent = bool(getattr(finished, "kept_parent", False))
    figures = {
        "train_s": time.perf_counter() - start,
        "steps": finished.steps,
        "best_step": finished.best_step,
        "effective_halo": finished.effective_halo,
        "collapsed": collapsed,
        "kept_parent": kept_parent,
        "version": collapsed is None and not kept_parent and output.is_file(),
        "validations": validations,
        "kept_parent_because": getattr(finished, "kept_parent_because", None),
        "note": getattr(finished, "note", None),  # e.g. the class-prior correction left out, and why
        "seen_agreement": getattr(trainer, "seen_agreement", None),  # an ensemble has none
    }
    try:
        return figures, trainer.snapshot(), trainer.metadata()
    except RuntimeError:  # an ensemble none of whose members was usable: nothing to score
        return {**figures, "collapsed": figures["collapsed"] or "no usable member", "version": False}, None, None


def retrain_round(
    ds: Dataset, image, parent_labels, labels, parent_path: Path, config: TrainConfig, output: Path
) -> tuple[dict, torch.nn.Module, Any]:
    """Fine-tune as the Train dock's Retrain: changed labels are the data, unchanged ones replayed, parent as start."""
    earlier = [TrainingData(image, parent_labels, ds.key)]
    run = retraining_data(image, labels, ds.key, earlier, lambda shape, dtype: np.zeros(shape, dtype))
    figures, model, meta = train(run.data, config, output, init=parent_path, replay=run.replay)
    return {**figures, "new_pixels": run.new_pixels, "replayed_pixels": run.replayed_pixels}, model, meta


def choose_slices(
    ds: Dataset, n_slices: int, loop: int, n_working: int, score_incomplete: bool
) -> tuple[list[int], list[int]]:
    """``(working, scored)``: working = painted + evenly spaced unpainted slices (with ``loop``), scored = the rest."""
    painted = list(ds.slices)
    complete = [z for z in range(n_slices) if z not in ds.incomplete_slices]
    unpainted = [z for z in complete if z not in painted]
    working = list(painted)
    if loop:
        extra = min(max(0, n_working - len(painted)), len(unpainted))
        picks = [unpainted[int((k + 0.5) * len(unpainted) / extra)] for k in range(extra)] if extra else []
        working = sorted(painted + picks)
    candidates = range(n_slices) if score_incomplete else complete
    scored = [z for z in candidates if z not in working]
    return working, scored


def pretrain_image(ds: Dataset, image: np.ndarray, args, path: Path) -> dict:
    """Self-supervised pretraining on the whole image (no labels: once per data set, shared by all stroke seeds, as
    the Train dock caches it per image) for ``--pretrain-minutes``, with the default network of ``--arch``."""
    from napari_msd.training.pretrain import PretrainConfig, Pretrainer, save_pretrained

    model = {"depth": args.model_depth} if args.model_depth else {}
    trainer = Pretrainer([image], PretrainConfig(arch=args.arch, model=model, time_limit=args.pretrain_minutes * 60))
    losses = [e.loss for e in trainer.run()]
    body = trainer.body()
    save_pretrained(path, body)
    log(
        f"{ds.key}: pretrained {body.describe()}; masked-pixel loss {np.mean(losses[:20]):.4f} -> "
        f"{np.mean(losses[-20:]):.4f}"
    )
    return {"path": str(path), "steps": body.steps, "seconds": body.seconds, "minutes": args.pretrain_minutes}


def run_dataset(ds: Dataset, args, variants: list[tuple[str, dict]], state: dict) -> None:
    image, labels = ds.load(args.data_root)
    if args.crop:
        image, labels = image[:, : args.crop, : args.crop].copy(), labels[:, : args.crop, : args.crop].copy()
    working, scored = choose_slices(ds, labels.shape[0], args.loop, args.working_slices, args.score_incomplete)
    truth = labels[scored]
    budget = round(FRACTION * labels.size)
    correction_budget = args.correction_budget or budget
    absent = {z: [ds.class_names[c] for c in ds.class_names if not (labels[z] == c).any()] for z in range(len(labels))}
    info = {
        "title": ds.title,
        "shape": list(labels.shape),
        "crop": args.crop,
        "painted": list(ds.slices),
        "working": working if args.loop else None,
        "scored": scored,
        "budget": budget,
        "correction_budget": correction_budget if args.loop else None,
        "loop": args.loop,
        "round_seconds": args.round_seconds if args.loop else None,
        "minutes": args.minutes,
        "headline": ds.headline_label,
        "class_names": ds.names,
        "notes": list(ds.notes),
        "classes_absent": {str(z): a for z, a in absent.items() if a},
        "strokes": [],
        "seeds": [],
    }
    state["info"]["datasets"][ds.key] = info
    log(f"{ds.title} {labels.shape}: painted {list(ds.slices)}, working {working}, scored {scored}")
    for name in ds.names:
        missing = [z for z in scored + working if name in absent[z]]
        if missing:
            log(f"  no {name} in the ground truth of slice(s) {_slices(sorted(missing))}")
    if any(overrides.get("pretrained") == "auto" for _, overrides in variants):
        pretrained = pretrain_image(ds, image, args, Path(state["tmp"]) / f"{ds.key}.pretrained")
        info["pretrained"] = pretrained
        variants = [
            (name, {**o, "pretrained": pretrained["path"]} if o.get("pretrained") == "auto" else o)
            for name, o in variants
        ]
    for seed in args.seeds:
        strokes, _, budgets = dataset_strokes(ds, labels, seed=seed, fraction=FRACTION)
        short = [{**b, "class": ds.class_names[b["class"]]} for b in budgets if b["painted"] < b["budget"]]
        info["strokes"].append({"seed": seed, "pixels": int((strokes > 0).sum()), "short": short})
        info["seeds"].append(seed)
        ran_out = ", ".join(f"slice {b['slice']} {b['class']} {b['painted']}/{b['budget']}" for b in short)
        log(
            f"{ds.key} seed {seed}: {int((strokes > 0).sum()):,} stroke px of {budget:,}"
            + (f"; ran out: {ran_out}" if short else "")
        )
        row = {"dataset": ds.key, "seed": seed, **run_forest(ds, image, strokes, scored, truth, seed)}
        state["rows"].append(row)
        log(f"{ds.key} seed {seed}: forest {ds.headline_label} {row['headline']:.3f} (train {row['train_s']:.0f} s)")
        save(state, args.json)
        for name, overrides in variants:
            config = variant_config(
                ds, args.arch, overrides, args.minutes * 60, seed, args.model_depth, args.prior_rows
            )
            method = f"{ARCH_NAMES.get(args.arch, args.arch)} {name}"
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "round0.msd"
                trainers: list[Trainer] = []
                trained, model, meta = train([TrainingData(image, strokes, ds.key)], config, path, keep=trainers)
                row = {
                    "dataset": ds.key,
                    "seed": seed,
                    "method": method,
                    "kind": "network",
                    "variant": name,
                    "overrides": overrides,
                    **trained,
                    **evaluate(ds, model, meta, image, scored, truth),
                }
                state["rows"].append(row)
                log(
                    f"{ds.key} seed {seed}: {method} {ds.headline_label} {row['headline']:.3f} "
                    f"({row['steps']} steps in {row['train_s']:.0f} s)"
                    + (
                        f"; COLLAPSED: {row['collapsed']} (scored as is; no version, no loop)"
                        if row["collapsed"]
                        else ""
                    )
                    + (f"; {row['note']}" if row.get("note") else "")
                )
                save(state, args.json)
                if args.flips and model is not None:
                    state["rows"].append(flips_row(ds, model, meta, image, scored, truth, row))
                    save(state, args.json)
                if args.prior_rows and not trained["collapsed"]:
                    state["rows"].extend(prior_rows(ds, trainers[-1], image, scored, truth, row))
                    save(state, args.json)
                if args.loop and trained["version"]:
                    run_loop(
                        ds,
                        args,
                        state,
                        seed,
                        method,
                        image,
                        labels,
                        strokes,
                        working,
                        scored,
                        truth,
                        correction_budget,
                        config,
                        path,
                        row,
                    )


def flips_row(ds: Dataset, model, meta, image, scored, truth, row: dict) -> dict:
    """The same network, its probabilities averaged over the mirrored inputs (``inference.flips``)."""
    result = {
        **row,
        "method": row["method"] + " + flips",
        "variant": f"{row['variant']} + flips",
        **evaluate(ds, model, meta, image, scored, truth, flips=True),
    }
    log(f"{ds.key} seed {row['seed']}: {result['method']} {ds.headline_label} {result['headline']:.3f}")
    return result


def prior_rows(ds: Dataset, trainer: Trainer, image, scored, truth, row: dict) -> list[dict]:
    """The same network after the engine's class-prior correction (``Trainer.correct_prior``: all of it, the largest
    safe tenth where the full shift would all but erase a painted class, or none), row "... + prior" with
    ``prior_scale`` and ``prior_refused``; where the engine applied less than all of it, a second row
    "... + full prior" forces the full shift past the erasure guard and the held-out-loss rule (the collapse verdict
    still holds)."""
    bias = prior_module.output_bias(trainer._judged)
    before = bias.detach().clone()
    trainer.correct_prior()
    scale, refused = trainer.prior_scale, trainer.prior_refused
    result = {
        **row,
        "method": row["method"] + " + prior",
        "variant": f"{row['variant']} + prior",
        "prior_scale": scale,
        "prior_refused": refused,
        "prior_scaled": trainer.prior_scaled,
        "class_prior": trainer.class_prior,
        **evaluate(ds, trainer.snapshot(), trainer.metadata(), image, scored, truth),
    }
    log(
        f"{ds.key} seed {row['seed']}: {result['method']} {ds.headline_label} {result['headline']:.3f} "
        f"(the engine applies {scale:.1f} of it" + (f": {refused}" if refused else "") + ")"
    )
    rows = [result]
    if scale < 1:
        with torch.no_grad():
            bias.copy_(before)
        keep, prior_module.ERASE_KEEP = prior_module.ERASE_KEEP, 0.0
        try:
            trainer.correct_prior(max_loss=math.inf)
        finally:
            prior_module.ERASE_KEEP = keep
        full = {
            **row,
            "method": row["method"] + " + full prior",
            "variant": f"{row['variant']} + full prior",
            "prior_refused": trainer.prior_refused,
            "class_prior": trainer.class_prior,
            **evaluate(ds, trainer.snapshot(), trainer.metadata(), image, scored, truth),
        }
        why = full["prior_refused"]
        log(
            f"{ds.key} seed {row['seed']}: {full['method']} {ds.headline_label} {full['headline']:.3f}"
            + (f" (not applied: {why})" if why else "")
        )
        rows.append(full)
    return rows


SCORES = ("headline", "iou", "mean_iou", "pixel_accuracy", "class_accuracy", "max_fraction_error")


def run_loop(
    ds: Dataset,
    args,
    state: dict,
    seed: int,
    method: str,
    image,
    labels,
    strokes,
    working,
    scored,
    truth,
    budget: int,
    config: TrainConfig,
    path: Path,
    row: dict,
) -> None:
    """Correction rounds as a person uses the dock: predict the working slices with the current version, paint
    corrections into the labels layer, Retrain. A retraining that collapses or does not beat its parent gives no
    new version (the dock keeps the parent current); the corrections stay painted and count as changed labels at the
    next Retrain, which again starts from that parent."""
    entry0 = {
        "dataset": ds.key,
        "seed": seed,
        "method": method,
        "round": 0,
        "correction_pixels": 0,
        "version": True,
        **{k: row[k] for k in ("train_s", "steps", "best_step")},
        **{k: row[k] for k in SCORES},
    }
    state["loop"].append(entry0)
    current = entry0
    labels_now = parent_labels = strokes  # the labels layer now, and as it was when the current version trained
    parent_path = path
    model, meta = load_model(parent_path)
    round_config = dataclasses.replace(config, steps=None, time_limit=args.round_seconds)
    for r in range(1, args.loop + 1):
        pred = predict(model, meta, image, working)
        rng = np.random.default_rng([seed, r])
        labels_now, painted = correction_strokes(pred, labels, labels_now, working, budget, rng)
        entry = {
            "dataset": ds.key,
            "seed": seed,
            "method": method,
            "round": r,
            "correction_pixels": painted,
            "working_errors": int(((pred != labels[working]) & (labels[working] != 0)).sum()),
        }
        if np.array_equal(labels_now, parent_labels):  # nothing to correct, nothing new since the parent
            entry.update(
                {
                    "version": False,
                    "train_s": 0.0,
                    "steps": 0,
                    "note": "no label changed",
                    **{k: current[k] for k in SCORES},
                }
            )
        else:
            out = path.with_name(f"round{r}.msd")
            figures, new_model, new_meta = retrain_round(
                ds, image, parent_labels, labels_now, parent_path, round_config, out
            )
            entry.update(figures)
            if figures["version"]:
                entry.update(evaluate(ds, new_model, new_meta, image, scored, truth))
                parent_labels, parent_path, model, meta = labels_now, out, new_model, new_meta
                current = entry
            else:  # the parent stays the current version: its scores stand
                entry.update({k: current[k] for k in SCORES})
                entry["note"] = (
                    "collapsed: " + figures["collapsed"]
                    if figures["collapsed"]
                    else "kept parent: " + (figures["kept_parent_because"] or "no better")
                )
        entry["forest_headline"] = run_forest(ds, image, labels_now, scored, truth, seed)["headline"]
        state["loop"].append(entry)
        log(
            f"{ds.key} seed {seed}: {method} round {r}: {painted} px corrected, forest on the same labels "
            f"{entry['forest_headline']:.3f}, "
            + (
                f"{ds.headline_label} {entry['headline']:.3f}"
                if entry["version"]
                else f"no new version ({entry.get('note')}), {ds.headline_label} stays {entry['headline']:.3f}"
            )
        )
        save(state, args.json)


def save(state: dict, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps({k: v for k, v in state.items() if k != "tmp"}, indent=1))


# -- tables ----------------------------------------------------------------------------------------------------------
def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def _f(v: float, fmt: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _slices(zs: list[int]) -> str:
    return ", ".join(map(str, zs))


def table(state: dict) -> str:
    """Markdown: per data set, one row per method (first training); then the correction loop, if any."""
    out = []
    for key, info in state["info"]["datasets"].items():
        rows = [r for r in state["rows"] if r["dataset"] == key]
        if not rows:
            continue
        seeds = sorted(set(info["seeds"]))
        pixels = _mean([s["pixels"] for s in info["strokes"]])
        shape = " x ".join(map(str, info["shape"])) + (f", top-left crop {info['crop']}" if info.get("crop") else "")
        short = sorted({f"{b['class']} (slice {b['slice']})" for s in info["strokes"] for b in s["short"]})
        out += [
            f"**{info['title']}** ({shape}): strokes on slices {_slices(info['painted'])}, {pixels:,.0f} px on "
            f"average of a {info['budget']:,} px budget"
            + (f" (ran out: {', '.join(short)})" if short else "")
            + f"; stroke seeds {', '.join(map(str, seeds))}; networks trained {info['minutes']:g} min; "
            f"scored on {len(info['scored'])} slices ({_slices(info['scored'])})."
        ]
        names = info["class_names"]
        out += [
            "",
            f"| method | training | {info['headline']}, seed {' / '.join(map(str, seeds))} | mean | "
            "vs forest (paired) | "
            + " | ".join(f"{n} IoU" for n in names)
            + " | pixel acc. | class acc. | max fraction error | prediction |",
            "|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|",
        ]
        forest = {r["seed"]: r["headline"] for r in rows if r["kind"] == "forest"}
        for method in dict.fromkeys(r["method"] for r in rows):
            runs = {r["seed"]: r for r in rows if r["method"] == method}
            steps = [r["steps"] for r in runs.values() if r["steps"]]
            training = f"{_mean([r['train_s'] for r in runs.values()]):.0f} s" + (
                (f", {min(steps)}-{max(steps)} steps" if min(steps) < max(steps) else f", {steps[0]} steps")
                if steps
                else ""
            )
            per_seed = " / ".join(
                _f(runs[s]["headline"]) + ("†" if runs[s].get("collapsed") else "") if s in runs else "-" for s in seeds
            )
            diffs = [runs[s]["headline"] - forest[s] for s in runs if s in forest]
            versus = (
                ""
                if next(iter(runs.values()))["kind"] == "forest" or not diffs
                else (f"{np.mean(diffs):+.3f} ({sum(d > 0 for d in diffs)}/{len(diffs)} better)")
            )
            ious = " | ".join(_f(_mean([r["iou"][n] for r in runs.values()])) for n in names)
            out.append(
                f"| {method} | {training} | {per_seed} | {_f(_mean([r['headline'] for r in runs.values()]))} | "
                f"{versus} | {ious} | {_f(_mean([r['pixel_accuracy'] for r in runs.values()]))} | "
                f"{_f(_mean([r['class_accuracy'] for r in runs.values()]))} | "
                f"{_f(_mean([r['max_fraction_error'] for r in runs.values()]), '.0%')} | "
                f"{_mean([r['predict_s'] for r in runs.values()]):.1f} s |"
            )
        if any(r.get("collapsed") for r in rows):
            out.append(
                "\n† collapsed: the engine kept no model (it predicts one class nearly everywhere); scored "
                "as it is, and left out of the correction loop."
            )
        out.append("")
    loop = state.get("loop") or []
    for key, info in state["info"]["datasets"].items():
        entries = [e for e in loop if e["dataset"] == key]
        if not entries:
            continue
        rounds = max(e["round"] for e in entries)
        out += [
            f"**{info['title']}**, correction loop: {rounds} round(s) of {info['correction_budget']:,} px of "
            f"correction strokes on working slices {_slices(info['working'])}, {info['round_seconds']:g} s "
            f"retraining each; {info['headline']} on the same {len(info['scored'])} scored slices, "
            "mean over seeds (min).",
            "",
            "| method | "
            + " | ".join(f"round {r}" for r in range(rounds + 1))
            + " | corrections painted | new versions | monotone |",
            "|---|" + "---|" * (rounds + 1) + "---|---|---|",
        ]
        forest = [r["headline"] for r in state["rows"] if r["dataset"] == key and r["kind"] == "forest"]
        for method in dict.fromkeys(e["method"] for e in entries):
            mine = [e for e in entries if e["method"] == method]
            by_seed: dict[int, dict[int, float]] = {}
            for e in mine:
                by_seed.setdefault(e["seed"], {})[e["round"]] = e["headline"]
            cells = []
            for r in range(rounds + 1):
                vals = [s[r] for s in by_seed.values() if r in s]
                cells.append(f"{_f(_mean(vals))} ({_f(min(vals))})" if vals else "-")
            monotone = all(
                s[r] >= s[r - 1] for s in by_seed.values() for r in range(1, rounds + 1) if r in s and r - 1 in s
            )
            later = [e for e in mine if e["round"] > 0]
            versions = f"{sum(bool(e['version']) for e in later)}/{len(later)}"
            out.append(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {_mean([e['correction_pixels'] for e in later]):,.0f} px/round | {versions} | "
                f"{'yes' if monotone else 'no'} |"
            )
            if forest and later and all("forest_headline" in e for e in later):  # ilastik's loop: refit on them
                by_round = {0: forest} | {
                    r: [e["forest_headline"] for e in later if e["round"] == r] for r in range(1, rounds + 1)
                }
                out.append(
                    f"| {FOREST}, refitted on {method}'s labels | "
                    + " | ".join(f"{_f(_mean(v))} ({_f(min(v))})" if v else "-" for v in by_round.values())
                    + " | | | |"
                )
        if forest:
            out.append(f"| {FOREST} (no loop) | {_f(_mean(forest))} ({_f(min(forest))}) |" + " |" * (rounds + 3))
        out.append(
            "\nA round whose retraining collapsed or did not beat its parent on the held-out labels gives "
            "no new version (as in the Train dock): the parent's score stands and its corrections are "
            "trained on at the next round."
        )
        out.append("")
    return "\n".join(out)


def merge(saved: list[dict]) -> dict:
    """Several --json outputs as one state: data set infos merged (seeds, strokes), rows and loop entries
    concatenated, a later (data set, seed, method[, round]) replacing an earlier one."""
    state = {"info": {"datasets": {}}, "rows": [], "loop": []}
    for d in saved:
        for key, info in d["info"]["datasets"].items():
            have = state["info"]["datasets"].setdefault(key, {**info, "seeds": [], "strokes": []})
            for s in info["strokes"]:
                if s["seed"] not in have["seeds"]:
                    have["seeds"].append(s["seed"])
                    have["strokes"].append(s)
        rows = {(r["dataset"], r["seed"], r["method"]): r for r in state["rows"] + d["rows"]}
        state["rows"] = list(rows.values())
        loop = {(e["dataset"], e["seed"], e["method"], e["round"]): e for e in state["loop"] + d.get("loop", [])}
        state["loop"] = list(loop.values())
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["isbi", "vnc"], choices=list(DATASETS))
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="folder holding isbi2012/ and vnc/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="stroke seeds (also seed training)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per network")
    parser.add_argument("--arch", default="msd", choices=list(ARCH_NAMES))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:key=value,...",
        help="a network variant overriding TrainConfig fields (repeatable), besides 'default'",
    )
    parser.add_argument("--no-default", action="store_true", help="train only the --variant rows")
    parser.add_argument(
        "--flips", action="store_true", help="also score every first network averaged over mirrored inputs"
    )
    parser.add_argument("--loop", type=int, default=0, metavar="K", help="correction rounds after the first training")
    parser.add_argument("--round-seconds", type=float, default=120.0, help="retraining time per correction round")
    parser.add_argument(
        "--working-slices",
        type=int,
        default=5,
        help="slices corrected in the loop (painted ones included); excluded from scoring",
    )
    parser.add_argument(
        "--correction-budget",
        type=int,
        default=None,
        help="pixels of correction strokes per round (default: the initial strokes' budget)",
    )
    parser.add_argument(
        "--score-incomplete",
        action="store_true",
        help="also score slices whose ground truth lacks a class (VNC 1, 7, 18)",
    )
    parser.add_argument(
        "--pretrain-minutes",
        type=float,
        default=5.0,
        help="self-supervised pretraining on each "
        "image (once, before the stroke seeds) for variants with pretrained=auto",
    )
    parser.add_argument(
        "--prior-rows",
        action="store_true",
        help="also score every first network after the "
        "class-prior correction (a row '... + prior'; same weights, output bias shifted)",
    )
    parser.add_argument("--crop", type=int, default=None, metavar="N", help="top-left N x N of every slice")
    parser.add_argument("--model-depth", type=int, default=None, help="network depth (MS-D layers, U-Net levels)")
    parser.add_argument("--json", type=Path, help="write the figures here (after every trained model)")
    parser.add_argument(
        "--table",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="only print the tables of earlier --json outputs (runs split over several calls are merged)",
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table(merge([json.loads(p.read_text()) for p in args.table])))
        return
    variants = ([] if args.no_default else [("default", {})]) + [parse_variant(v) for v in args.variant]
    if not variants:
        raise SystemExit("no network to train: give --variant or leave out --no-default")
    for _, overrides in variants:  # refuse a bad override before any training
        variant_config(DATASETS[args.datasets[0]], args.arch, overrides, 60.0, 0, args.model_depth)
    state = {
        "info": {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "threads": torch.get_num_threads(),
            "datasets": {},
        },
        "rows": [],
        "loop": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        state["tmp"] = tmp
        for key in args.datasets:
            run_dataset(DATASETS[key], args, variants, state)
        del state["tmp"]
    save(state, args.json)
    print(table(state))


if __name__ == "__main__":
    main()
