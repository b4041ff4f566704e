"""``TrainingPlot``: stored series, smoothing, decimation, summary, painting and repaint throttling."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from qtpy.QtGui import QImage
from qtpy.QtWidgets import QApplication

from napari_msd._widgets.plot import EMA_ALPHA, LOSS_COLOR, MAX_LOSS_POINTS, TrainingPlot


def _ema(values):
    out, ema = [], None
    for v in values:
        ema = v if ema is None else EMA_ALPHA * v + (1 - EMA_ALPHA) * ema
        out.append(ema)
    return out


def _pixels(widget) -> np.ndarray:
    image = widget.grab().toImage()
    assert not image.isNull()
    image = image.convertToFormat(QImage.Format.Format_RGB32)
    bits = image.constBits()
    if hasattr(bits, "setsize"):  # PyQt's sip.voidptr
        bits.setsize(image.sizeInBytes())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : image.width() * 4].reshape(image.height(), image.width(), 4).copy()


@pytest.fixture
def plot(qtbot):
    widget = TrainingPlot()
    qtbot.addWidget(widget)
    widget.resize(420, 200)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_smoothing_matches_ema_and_skips_non_finite(plot):
    rng = np.random.default_rng(0)
    losses = (np.exp(-np.arange(300) / 80) + 0.1 * rng.random(300)).tolist()
    for step, loss in enumerate(losses):
        plot.add_loss(step, loss)
        if step % 50 == 7:
            plot.add_loss(step, math.nan)
            plot.add_loss(step, math.inf)
    s = plot.series()
    assert s["steps"] == list(range(300))
    assert s["losses"] == pytest.approx(losses)
    assert s["smoothed"] == pytest.approx(_ema(losses), rel=1e-12)
    assert all(math.isfinite(v) for v in s["losses"] + s["smoothed"])


def test_decimation_bounds_points_and_keeps_ends(plot):
    n = 23_457
    losses = [1.0 / (1 + 0.001 * i) for i in range(n)]
    for i, loss in enumerate(losses):
        plot.add_loss(10 * i, loss)
        assert len(plot.series()["steps"]) <= MAX_LOSS_POINTS if i % 997 == 0 else True
    s = plot.series()
    assert 1000 < len(s["steps"]) <= MAX_LOSS_POINTS and s["stride"] > 1
    assert s["steps"][0] == 0 and s["steps"][-1] == 10 * (n - 1)
    assert np.all(np.diff(s["steps"]) > 0)
    assert s["smoothed"][-1] == pytest.approx(_ema(losses)[-1])  # the average runs over every loss
    kept = np.asarray(s["steps"]) // 10
    assert s["losses"] == pytest.approx([losses[i] for i in kept])


def test_validation_marks_best_and_summary(plot):
    for step in range(601):
        plot.add_loss(step, 0.5)
    plot.add_validation(200, {"global accuracy": 0.80, "membrane IoU": 0.40})
    plot.add_validation(400, {"global accuracy": 0.93, "membrane IoU": float("nan")})
    plot.add_validation(600, {"global accuracy": 0.91, "membrane IoU": 0.60})
    plot.mark(300, "v2: retrain")
    plot.set_best(400)
    s = plot.series()
    assert s["validation"] == {
        "global accuracy": {"steps": [200, 400, 600], "values": [0.80, 0.93, 0.91]},
        "membrane IoU": {"steps": [200, 600], "values": [0.40, 0.60]},
    }
    assert s["marks"] == [(300, "v2: retrain")] and s["best"] == 400
    text = plot.summary()
    assert text.startswith("loss 0.5")
    assert "global accuracy 0.91 (best 0.93 @ step 400)" in text and "membrane IoU 0.60" in text
    plot.clear()
    assert plot.series()["steps"] == [] and plot.series()["validation"] == {} and plot.summary() == ""


@pytest.mark.parametrize("size", [(120, 140), (420, 200), (1000, 420)])
def test_paints_empty_single_point_and_full(plot, size):
    plot.resize(*size)
    empty = _pixels(plot)
    assert empty.shape[:2] == (plot.height(), plot.width())
    plot.add_loss(5, 0.7)
    single = _pixels(plot)
    assert (single != empty).any(axis=-1).sum() > 20
    for step in range(6, 500):
        plot.add_loss(step, 1 / (1 + 0.01 * step))
    plot.add_validation(250, {"global accuracy": 0.7, "membrane IoU": 0.3})
    plot.add_validation(499, {"global accuracy": 0.9, "membrane IoU": 0.5})
    plot.mark(100, "v2: retrain")
    plot.set_best(499)
    full = _pixels(plot)
    assert (full != single).any(axis=-1).sum() > 100
    bgr = [int(LOSS_COLOR[i : i + 2], 16) for i in (5, 3, 1)]  # RGB32 pixels are B, G, R, A bytes
    near = (np.abs(full[..., :3].astype(int) - bgr) <= 10).all(axis=-1)  # Xvfb may run at 16-bit depth
    assert near[plot.fontMetrics().height() + 8 :].sum() > 40  # the smoothed loss line, below the legend
    plot.clear()
    assert (_pixels(plot) == empty).all()


class _CountingPlot(TrainingPlot):
    paints = 0

    def paintEvent(self, event):  # noqa: N802
        self.paints += 1
        super().paintEvent(event)


def test_updates_are_throttled(qtbot):
    widget = _CountingPlot()
    qtbot.addWidget(widget)
    widget.resize(400, 200)
    widget.show()
    qtbot.waitExposed(widget)
    qtbot.wait(50)
    widget.paints = 0
    start = time.perf_counter()
    for step in range(1000):
        widget.add_loss(step, 1.0 / (step + 1))
        QApplication.processEvents()  # an unthrottled update() would paint on every call
    elapsed = time.perf_counter() - start
    qtbot.wait(300)
    assert 1 <= widget.paints <= 3 + int(12 * elapsed), (widget.paints, elapsed)
    assert widget.paints <= 15
