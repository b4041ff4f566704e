"""napari started the ordinary way (not ``napari-msd demo``): open the sample, train from the Train dock, predict
with the Predict dock, and check that the process never loaded torch's compiler stack.

``--steps N`` (default 100) training steps; ``--learn-steps K`` first waits until the dock's background
self-supervised pretraining ("Learn the image while you paint") has made K steps, as it does while a person paints.

On a machine with software OpenGL (Mesa llvmpipe) and a torch with Triton, loading ``torch._dynamo`` after
OpenGL crashes the process; this script is what a user does from the menus, so it must finish. Run it under
an X server (``xvfb-run -a python scripts/plain_napari_session.py``); it prints one line and exits 0 on success,
1 with the reason otherwise (a crash ends it with a signal).
"""

from __future__ import annotations

import argparse
import sys
import time

STEPS = 100  # from scratch, the paper MS-D needs more than a few dozen steps before it predicts more than one class


def _wait(app, condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps")
    parser.add_argument("--learn-steps", type=int, default=0, help="background pretraining steps to wait for first")
    args = parser.parse_args(argv)
    steps = args.steps
    import napari  # the ordinary start: napari (and OpenGL) first, the plugin later from the menus
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    try:
        viewer.open_sample("napari-msd", "isbi_strokes")  # File > Open Sample > napari-msd
        _, train = viewer.window.add_plugin_dock_widget("napari-msd", "Train")  # Plugins > MS-D segmentation
        _, predict = viewer.window.add_plugin_dock_widget("napari-msd", "Predict")
        train.length.setValue(steps)
        train.length_unit.setCurrentText("steps")
        if args.learn_steps:  # the person paints meanwhile; the sample's strokes stand for that
            train.pretrain_check.setChecked(True)
            _wait(
                app,
                lambda: (
                    train.pretraining.pretrainer is not None and train.pretraining.pretrainer.step >= args.learn_steps
                ),
                900,
                "learning the image",
            )
        if not train.start():
            print("FAILED: the Train dock did not start")
            return 1
        _wait(app, lambda: train.work is not None and not train.work.running, 600, "training")
        from napari_msd._widgets.session import get_session

        version = get_session(viewer).versions.current
        if version is None or version.steps != steps:
            print(f"FAILED: training ended without a {steps}-step model version: {train.status.text()}")
            return 1
        if not predict.predict():
            print("FAILED: the Predict dock did not start")
            return 1
        _wait(app, lambda: predict.work is not None and not predict.work.running, 600, "prediction")
        labels = predict.prediction_layer()
        if labels is None or int(labels.data.max()) == 0:
            print("FAILED: no prediction")
            return 1
        loaded = [m for m in ("torch._dynamo", "triton") if m in sys.modules]
        if loaded:
            print(f"FAILED: {', '.join(loaded)} loaded in the viewer's process (crashes under software OpenGL)")
            return 1
        learned = f" after {args.learn_steps} steps of learning the image," if args.learn_steps else ""
        print(
            f"OK: napari started by hand, sample opened,{learned} {steps} steps trained from the Train dock, predicted"
        )
        return 0
    finally:
        for dock in (locals().get("train"), locals().get("predict")):
            if dock is not None:
                dock.close_workers()
        viewer.close()


if __name__ == "__main__":
    sys.exit(main())
