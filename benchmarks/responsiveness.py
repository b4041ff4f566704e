"""Responsiveness of the napari docks: event-loop stalls while training and predicting, time to the first preview.

Run from the repository root with the package installed, on a display (or a virtual one)::

    xvfb-run -a python benchmarks/responsiveness.py            # about 3 minutes on a 2-core CPU
    xvfb-run -a python benchmarks/responsiveness.py --quick    # a smoke test of the script

It opens ``napari-msd demo`` (the ISBI sample with its strokes, the Model / Train / Predict docks) and
drives the docks as a user would, while a 10 ms ``QTimer`` heartbeat runs in napari's event loop. The
longest gap between two heartbeats minus the 10 ms period is the longest time the interface could not
respond (a stall), measured from the moment the button's click handler has returned (the click handler
itself, which adds layers, is timed separately) until the work has ended. Phases:

1. **Training**: "Train new model" with the paper MS-D (100 layers, width 1) and the dock's defaults
   (batch 16, 64 px patches, live preview of the view every 1.5 s or more, within a twentieth of the training's
   time) for ``--steps`` steps. Reported: the longest stall, where the CPU went (GUI thread, training threads,
   display server), time from the click to the first live preview
   shown (and to the first training step), previews shown, training steps per second; then the same training
   (configuration, image, strokes, steps) without the viewer, as ``napari-msd train`` runs it, and the dock's
   speed as a share of that.
2. **Prediction**: "Predict" with the trained version on a larger volume (``--volume``, default
   16 x 1024 x 1024, the sample tiled and mirrored, held as a dask array over a zarr store so the dock
   streams into on-disk outputs), with the uncertainty layer. Reported: the longest stall, time to the
   first block shown, blocks per second.
   **Retrain**: a 32 x 32 patch of the strokes repainted as the other class, then "Retrain" for
   ``--retrain-steps`` steps. Reported: from the click to the updated live preview shown (and to the first
   fine-tuning step).
3. **Review**: the main-thread cost of "Next uncertain region" and "Use corrections" (after repainting a
   64 x 64 patch), each the longest of 5 calls.

It prints a Markdown table; ``--json PATH`` writes the raw figures. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402


class Heartbeat:
    """A 10 ms QTimer recording the times it fired; :meth:`longest_stall` over a window of time."""

    def __init__(self, period_ms: int = 10):
        from qtpy.QtCore import QTimer

        self.period = period_ms / 1000
        self.beats: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(period_ms)
        self.timer.timeout.connect(lambda: self.beats.append(time.perf_counter()))
        self.timer.start()

    def longest_stall(self, start: float, stop: float) -> float:
        beats = np.array([b for b in self.beats if start <= b <= stop])
        if len(beats) < 2:
            return float("nan")
        return float(np.diff(beats).max() - self.period)


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process's main (GUI) thread, its other threads and child processes (the
    training process), and the display server
    (an X server process, e.g. the Xvfb of ``xvfb-run``, which renders the canvas in software on a machine
    without a GPU)."""
    import os

    import psutil

    process = psutil.Process()
    main = sum(t.user_time + t.system_time for t in process.threads() if t.id == os.getpid())
    rest = sum(process.cpu_times()[:2]) - main  # the process's total includes threads that have ended
    for child in process.children(recursive=True):  # the Train dock's training process
        try:
            rest += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    display = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("Xvfb", "Xorg", "X"):
            try:
                display += sum(proc.cpu_times()[:2])
            except psutil.Error:
                pass
    return {"gui_thread": main, "other_threads": rest, "display_server": display}


def wait(condition, timeout: float) -> float:
    """Run Qt's event loop (as napari.run does: idle in C++, no Python polling) until ``condition()``;
    returns when it became true (perf_counter)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.perf_counter() + timeout
    met: list[float] = []

    def check() -> None:
        if condition():
            met.append(time.perf_counter())
            loop.quit()
        elif time.perf_counter() > deadline:
            loop.quit()

    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(check)
    timer.start()
    check()
    if not met:
        loop.exec()
    timer.stop()
    if not met:
        raise TimeoutError("the docks did not finish in time")
    return met[0]


def big_volume(sample: np.ndarray, shape: tuple[int, int, int], workdir: Path):
    """The sample tiled (mirrored) to ``shape`` in a zarr store, opened as a dask array."""
    import dask.array as da
    import zarr

    reps = [-(-n // s) for n, s in zip(shape, sample.shape)]
    tiled = np.pad(sample, [(0, (r - 1) * s) for r, s in zip(reps, sample.shape)], mode="symmetric")
    tiled = tiled[tuple(slice(0, n) for n in shape)]
    store = zarr.create_array(
        store=str(workdir / "volume.zarr"), shape=shape, chunks=(1, 512, 512), dtype=tiled.dtype, overwrite=True
    )
    store[...] = tiled
    return da.from_zarr(store)


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new Python process, as the command line would run it: the viewer's process is not a
    fair place (its main thread runs torch with one thread, for the docks' workers, see workers.py)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def core_training(image: np.ndarray, labels: np.ndarray, name: str, config, steps: int) -> dict:
    """The dock's training again, without the viewer, as ``napari-msd train`` runs it (the same core generator,
    configuration, image and strokes): its steps per second, timed as the dock's are."""
    from napari_msd.training.engine import Trainer
    from napari_msd.training.events import TrainStep
    from napari_msd.training.sampling import TrainingData

    data = TrainingData(image, labels, name)
    config = dataclasses.replace(config, steps=steps)
    before, start = cpu_seconds(), time.perf_counter()
    times = [time.perf_counter() for event in Trainer([data], config).run() if isinstance(event, TrainStep)]
    after, wall = cpu_seconds(), time.perf_counter() - start
    return {
        "steps_per_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None,
        "cpu_s": {k: after[k] - before[k] for k in before},
        "seconds": wall,
    }


def core_prediction(model, metadata, volume) -> dict:
    """The Predict dock's prediction again, without the viewer (the same core Predictor, model, volume, block
    plan, probabilities for the uncertainty), written into memory: its throughput."""
    from napari_msd.inference.predictor import Predictor
    from napari_msd.inference.uncertainty import to_uint8, uncertainty

    predictor = Predictor(model, metadata, device="cpu")
    labels = np.zeros(volume.shape, np.uint8)
    unc = np.zeros(volume.shape, np.uint8)
    start = time.perf_counter()
    for done in predictor.blocks(volume, probabilities=True):
        labels[done.block.out] = done.labels
        unc[done.block.out] = to_uint8(uncertainty(done.probabilities, "entropy"))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mpx_per_s": float(np.prod(volume.shape)) / 1e6 / seconds}


def run(args) -> dict:
    from napari_msd._widgets.demo import open_demo

    machine = describe()  # before the docks give the main thread one torch thread
    viewer, docks = open_demo(show=True)
    train, predict = docks["Train"], docks["Predict"]
    viewer.window.resize(1500, 950)
    wait(lambda: True, 1)
    beat = Heartbeat()
    wait(lambda: len(beat.beats) > 20, 10)
    out: dict = {"machine": machine, "steps": args.steps}

    # 1. training
    train.length.setValue(args.steps)
    train.preview_check.setChecked(not args.no_preview)
    steps_seen: list[float] = []
    threads_said: list[str] = []
    on_event = train._on_event
    train._on_event = lambda e: (
        type(e).__name__ == "TrainStep" and steps_seen.append(time.perf_counter()),
        type(e).__name__ == "CpuThreads" and threads_said.append(e.text),
        on_event(e),
    )
    previews: list[float] = []
    show_preview = train._show_preview
    train._show_preview = lambda e: (show_preview(e), previews.append(time.perf_counter()))
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    train.start_button.click()
    clicked = time.perf_counter()
    t1 = wait(lambda: not train.work.running, args.timeout)
    cpu1 = cpu_seconds()
    out["train"] = {
        "seconds": t1 - t0,
        "click_ms": 1000 * (clicked - t0),
        "stall_ms": 1000 * beat.longest_stall(clicked, t1),
        "first_step_s": steps_seen[0] - t0 if steps_seen else None,
        "first_preview_s": train.first_preview_after,
        "forest_preview_s": train.forest_preview_after,
        "threads": " -> ".join(threads_said) or "-",
        "previews": len(previews),
        "steps_per_s": (len(steps_seen) - 1) / (steps_seen[-1] - steps_seen[0]) if len(steps_seen) > 1 else None,
        "version": viewer and train.session.versions.current.describe(),
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},  # over the whole run, preparation included
    }

    job = train._job
    out["core"] = in_fresh_process(
        core_training, np.asarray(job.image), np.asarray(job.labels), job.name, job.config, args.steps
    )

    if args.training_only:
        viewer.close()
        return out

    # 1b. turnaround after a correction: repaint a patch of the strokes as the other class, press Retrain
    labels_layer = train._job.labels_layer
    z = int(np.flatnonzero((np.asarray(labels_layer.data) > 0).any(axis=(1, 2)))[0])
    patch = np.asarray(labels_layer.data[z, 200:232, 200:232])
    labels_layer.data[z, 200:232, 200:232] = np.where(patch == 1, 2, 1).astype(patch.dtype)
    labels_layer.refresh()
    train.length.setValue(args.retrain_steps)
    shown_before = len(previews)
    t0 = time.perf_counter()
    train.retrain_button.click()
    first = wait(lambda: len(previews) > shown_before or not train.work.running, args.timeout)
    t1 = wait(lambda: not train.work.running, args.timeout)
    out["retrain"] = {
        "first_preview_s": first - t0 if len(previews) > shown_before else None,
        "first_step_s": next((s - t0 for s in steps_seen if s > t0), None),
        "seconds": t1 - t0,
        "steps": args.retrain_steps,
    }

    # 2. prediction of a larger, lazily loaded volume
    with tempfile.TemporaryDirectory(prefix="napari-msd-bench-") as tmp:
        volume = big_volume(viewer.layers["EM (ISBI 2012 crop)"].data, tuple(args.volume), Path(tmp))
        layer = viewer.add_image(volume, name="big volume", colormap="gray")
        predict.image_combo.choose(layer)
        blocks: list[float] = []
        on_block = predict._on_block
        predict._on_block = lambda e: (on_block(e), hasattr(e, "region") and blocks.append(time.perf_counter()))
        t0 = time.perf_counter()
        predict.predict_button.click()
        clicked = time.perf_counter()
        t1 = wait(lambda: not predict.work.running, args.timeout)
        out["predict"] = {
            "volume": list(args.volume),
            "seconds": t1 - t0,
            "click_ms": 1000 * (clicked - t0),
            "stall_ms": 1000 * beat.longest_stall(clicked, t1),
            "first_block_s": blocks[0] - t0 if blocks else None,
            "blocks": len(blocks),
            "mpx_per_s": float(np.prod(args.volume)) / 1e6 / (t1 - t0),
        }
        version = train.session.versions.current
        out["core_predict"] = in_fresh_process(core_prediction, version.model, version.metadata, volume)

        # 3. review actions, timed in the main thread
        next_times, correction_times = [], []
        prediction = predict.prediction_layer()
        for _ in range(5):
            a = time.perf_counter()
            predict.next_uncertain_region()
            next_times.append(time.perf_counter() - a)
        train.image_combo.choose(layer)
        train.labels_combo.choose(viewer.add_labels(np.zeros(tuple(args.volume), np.uint8), name="big labels"))
        for i in range(5):
            prediction.data[i % args.volume[0], 100:164, 100:164] = 1 + (i % 2)
            a = time.perf_counter()
            predict.use_corrections()
            correction_times.append(time.perf_counter() - a)
        out["review"] = {"next_region_ms": 1000 * max(next_times), "use_corrections_ms": 1000 * max(correction_times)}
        viewer.close()
    return out


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def table(r: dict) -> str:
    t, c = r["train"], r["core"]
    rows = [
        ("Machine", r["machine"], ""),
        (
            f"Training, MS-D 100 layers, {r['steps']} steps: longest event-loop stall",
            f"{t['stall_ms']:.0f} ms",
            "< 100 ms",
        ),
        ("'Train new model' click handled (creates the preview layer and progress bar)", f"{t['click_ms']:.0f} ms", ""),
        ("Start → first answer shown (random forest on the strokes)", _s(t["forest_preview_s"]), ""),
        ("Start → first live preview of the network shown", _s(t["first_preview_s"]), "< 10 s"),
        ("Start → first training step", f"{t['first_step_s']:.1f} s", ""),
        ("Live previews shown / training speed in the dock", f"{t['previews']} / {t['steps_per_s']:.2f} steps/s", ""),
        ("Threads the dock's training chose (start -> changes at validations)", t["threads"], ""),
        (
            "CPU during the dock's training: GUI thread / training (threads and process) / display server",
            " / ".join(f"{t['cpu_s'][k]:.1f} s" for k in ("gui_thread", "other_threads", "display_server"))
            + f" (wall {t['seconds']:.0f} s)",
            "",
        ),
        (
            "The same training without the viewer (the CLI's path, a fresh process): speed / CPU",
            f"{c['steps_per_s']:.2f} steps/s / {c['cpu_s']['gui_thread'] + c['cpu_s']['other_threads']:.1f} s"
            + f" (wall {c['seconds']:.0f} s)",
            "",
        ),
        (
            f"Dock training speed{' with the live preview' if t['previews'] else ''}, share of the CLI's",
            f"{t['steps_per_s'] / c['steps_per_s']:.0%}",
            ">= 85%",
        ),
    ]
    if "predict" in r:
        rows += later_rows(r)
    lines = ["| Measure | Value | Target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def later_rows(r: dict) -> list[tuple[str, str, str]]:
    p, v, rt = r["predict"], r["review"], r["retrain"]
    z, y, x = p["volume"]
    return [
        ("Retrain after a correction → updated live preview shown", _s(rt["first_preview_s"]), "< 5 s"),
        ("Retrain after a correction → first training step", _s(rt["first_step_s"]), ""),
        (f"Prediction, {z} x {y} x {x} dask/zarr volume: longest stall", f"{p['stall_ms']:.0f} ms", "< 100 ms"),
        ("'Predict' click handled (creates the output layers)", f"{p['click_ms']:.0f} ms", ""),
        ("Predict → first block shown / throughput", f"{p['first_block_s']:.1f} s / {p['mpx_per_s']:.2f} Mpx/s", ""),
        (
            "The same prediction without the viewer (the core Predictor) / the dock's share of it",
            f"{r['core_predict']['mpx_per_s']:.2f} Mpx/s / {p['mpx_per_s'] / r['core_predict']['mpx_per_s']:.0%}",
            ">= 90%",
        ),
        ("'Next uncertain region' (main thread)", f"{v['next_region_ms']:.0f} ms", ""),
        (f"'Use corrections' on {z} x {y} x {x} (main thread)", f"{v['use_corrections_ms']:.0f} ms", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    parser.add_argument("--retrain-steps", type=int, default=30, help="steps of the Retrain after a correction")
    parser.add_argument("--volume", type=int, nargs=3, default=[16, 1024, 1024], metavar=("Z", "Y", "X"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per phase")
    parser.add_argument("--quick", action="store_true", help="20 steps, a 4 x 512 x 512 volume")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--no-preview", action="store_true", help="train with the live preview off")
    parser.add_argument("--training-only", action="store_true", help="phase 1 only: the dock's and the CLI's training")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.retrain_steps, args.volume = 20, 5, [4, 512, 512]
    result = run(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
