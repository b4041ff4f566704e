"""Training from sparse strokes on ISBI 2012: MS-D and U-Net against a random-forest pixel classifier.

Strokes covering 0.1% of the volume's pixels are drawn programmatically on 3 of the 30 slices
(see ``isbi_strokes.py``). Each network trains for the same wall-clock budget on this CPU; the
random forest on ilastik-style filter features is trained on the same strokes. All three are
scored on the 27 slices that carry no stroke: membrane IoU, pixel (global) accuracy and class
accuracy against the dense ground truth.

    python benchmarks/isbi_training.py                 # 5 minutes per network
    python benchmarks/isbi_training.py --minutes 1     # a quicker, rougher run

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

from napari_msd.io import load_model  # noqa: E402
from napari_msd.training import metrics  # noqa: E402
from napari_msd.training.engine import TrainConfig, Trainer  # noqa: E402
from napari_msd.training.events import TrainingFinished  # noqa: E402
from napari_msd.training.inputs import InputSpec, read_input  # noqa: E402
from napari_msd.training.normalization import Normalization  # noqa: E402
from napari_msd.training.sampling import TrainingData  # noqa: E402



@torch.no_grad()
def predict_slices(model: torch.nn.Module, image: np.ndarray, slices: list[int], spec: InputSpec,
                   normalization: Normalization) -> np.ndarray:
    """Whole-plane prediction of ``slices`` (labels 1..K), cut exactly as in training."""
    out = np.zeros((len(slices), *image.shape[1:]), np.uint8)
    h, w = image.shape[1:]
    for k, z in enumerate(slices):
        x, _ = read_input(image, spec, (z, h // 2, w // 2), (h, w))
        logits = model(torch.from_numpy(normalization(x))[None])
        out[k] = logits.argmax(1)[0].numpy() + 1
    return out


def score(truth: np.ndarray, pred: np.ndarray) -> dict:
    cm = metrics.confusion_matrix(truth, pred, 2)
    return {"membrane_iou": float(metrics.iou(cm)[0]), "pixel_accuracy": float(metrics.global_accuracy(cm)),
            "class_accuracy": float(metrics.class_accuracy(cm))}


def _evaluate(path: Path, image, test_slices, truth) -> tuple[dict, float, int]:
    model, meta = load_model(path)
    start = time.perf_counter()
    pred = predict_slices(model, image, test_slices, InputSpec.from_dict(meta.input),
                          Normalization.from_dict(meta.normalization))
    return score(truth, pred), time.perf_counter() - start, sum(p.numel() for p in model.parameters())


def run_network(arch: str, image, strokes, test_slices, truth, seconds: float, seed: int) -> list[dict]:
    """One training run; scored as trained and after the optional class-prior correction (same weights)."""
    config = TrainConfig(arch=arch, steps=None, time_limit=seconds, seed=seed, validate_every=50, patience=0,
                         class_names=["membrane", "cell interior"])
    name = {"msd": "MS-D (d=100, w=1)", "unet": "U-Net (depth 4, 32 base)"}[arch]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.msd"
        trainer = Trainer([TrainingData(image, strokes, "isbi2012")], config, output=path)
        start = time.perf_counter()
        for event in trainer.run():
            if isinstance(event, TrainingFinished):
                finished = event
        train_s = time.perf_counter() - start
        common = {"train_s": train_s, "steps": finished.steps, "best_step": finished.best_step,
                  "effective_halo": finished.effective_halo}
        scores, predict_s, n_params = _evaluate(path, image, test_slices, truth)
        rows.append({"method": name, "parameters": n_params, "predict_s": predict_s, **common, **scores})
        prior = trainer.correct_prior()
        trainer.save(path, overwrite=True)
        scores, predict_s, n_params = _evaluate(path, image, test_slices, truth)
        label = (f"{name} + prior correction (membrane prior {prior[0]:.2f})" if prior is not None else
                 f"{name} + prior correction (refused: it cost held-out strokes accuracy)")
        rows.append({"method": label, "parameters": n_params,
                     "predict_s": predict_s, **common, **scores})
    return rows


def run_rf(image, strokes, test_slices, truth, seed: int) -> dict:
    start = time.perf_counter()
    forest = train_rf(image, strokes, seed=seed)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = predict_rf(forest, image[test_slices])
    predict_s = time.perf_counter() - start
    return {"method": "Random forest, ilastik features", "parameters": None, "train_s": train_s, "steps": None,
            "best_step": None, "predict_s": predict_s, **score(truth, pred)}


def table(rows: list[dict], info: dict) -> str:
    lines = [f"ISBI 2012, strokes on slices {info['painted']} ({info['stroke_pixels']:,} px = "
             f"{info['stroke_fraction']:.2%} of the volume), scored on the {info['n_test']} unpainted slices",
             "", "| method | parameters | training | membrane IoU | pixel accuracy | class accuracy | prediction |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        params = f"{r['parameters']:,}" if r["parameters"] else "-"
        steps = f"{r['train_s']:.0f} s" + (f", {r['steps']} steps" if r["steps"] else "")
        lines.append(f"| {r['method']} | {params} | {steps} | {r['membrane_iou']:.3f} | {r['pixel_accuracy']:.3f} | "
                     f"{r['class_accuracy']:.3f} | {r['predict_s']:.1f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="folder with train-volume.tif and labels")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", nargs="*", default=["msd", "unet"], choices=["msd", "unet"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    image, labels = load_isbi(args.data)
    strokes, painted = make_strokes(labels, seed=args.seed)
    test_slices = [z for z in range(labels.shape[0]) if z not in set(painted)]
    truth = labels[test_slices]
    info = {"painted": list(painted), "stroke_pixels": int((strokes > 0).sum()),
            "stroke_fraction": float((strokes > 0).mean()), "n_test": len(test_slices), "threads": torch.get_num_threads()}
    rows = [run_rf(image, strokes, test_slices, truth, args.seed)]
    print(f"random forest done: membrane IoU {rows[-1]['membrane_iou']:.3f}", file=sys.stderr)
    for arch in args.arch:
        rows += run_network(arch, image, strokes, test_slices, truth, args.minutes * 60, args.seed)
        print(f"{arch} done: membrane IoU {rows[-2]['membrane_iou']:.3f} / {rows[-1]['membrane_iou']:.3f}",
              file=sys.stderr)
    print(table(rows, info))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
