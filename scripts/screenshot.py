"""Save the README screenshot: napari with the napari-msd docks, after training on the sample strokes and
predicting the sample, the prediction shown over the EM on a slice nobody painted.

Run from the repository root with the package installed, on a display (or a virtual one)::

    xvfb-run -a python scripts/screenshot.py                 # writes docs/screenshot.png; ~10 min on 2 cores
                                                             # (300 steps in the dock, live preview on)
    xvfb-run -a python scripts/screenshot.py --steps 30 -o /tmp/shot.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qtpy.QtCore import QEventLoop, QTimer


def run_until(condition, timeout: float) -> None:
    """Run Qt's event loop until ``condition()`` holds (checked every 50 ms)."""
    loop, timer = QEventLoop(), QTimer()
    deadline = time.perf_counter() + timeout
    timer.timeout.connect(lambda: (condition() or time.perf_counter() > deadline) and loop.quit())
    timer.start(50)
    loop.exec()
    timer.stop()
    if not condition():
        raise TimeoutError("training or prediction did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/screenshot.png"))
    parser.add_argument("--steps", type=int, default=300, help="training steps of the paper MS-D (default 300)")
    args = parser.parse_args()

    from napari_msd._widgets.demo import open_demo, save_window

    viewer, docks = open_demo()
    train, predict = docks["Train"], docks["Predict"]
    train.length.setValue(args.steps)
    train.start()
    run_until(lambda: not train.work.running, 3600)
    predict.predict()
    run_until(lambda: not predict.work.running, 3600)
    for name in ("live preview", "strokes", "uncertainty (v1)"):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    prediction = viewer.layers["prediction (v1)"]
    prediction.opacity = 0.5
    viewer.layers.selection.active = prediction
    painted = set(viewer.layers["strokes"].metadata.get("stroke_slices", []))
    unpainted = next(z for z in range(prediction.data.shape[0]) if z not in painted)
    viewer.dims.set_current_step(0, unpainted)
    save_window(viewer, args.output)
    print(f"saved {args.output}: {train.session.versions.current.describe()}, slice {unpainted}")
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
