"""``TrainingPlot``: live loss and validation curves for the Train dock, drawn with ``QPainter``."""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

MAX_LOSS_POINTS = 5000  # stored loss points; above this every second one is dropped and the stride doubles
EMA_ALPHA = 0.1  # weight of the newest loss in the smoothed curve
REPAINT_INTERVAL_MS = 100  # at most ~10 repaints a second from new data
LOSS_COLOR = "#4a90e2"
BEST_COLOR = "#d4a017"
METRIC_COLORS = ("#3cb44b", "#e6194b", "#a05fd8", "#f58231", "#1fb5c8", "#e05bc0")
_SEP = " · "


def _nice_ticks(lo: float, hi: float, count: int = 4, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering ``lo..hi``."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo] if math.isfinite(lo) else []
    raw = span / max(count, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    while (t := (first + len(ticks)) * step) <= hi + step * 1e-9:
        ticks.append(t)
    return ticks


def _fmt_step(value: float) -> str:
    """A step tick label: ``1500``, ``20k``."""
    v = int(round(value))
    return f"{v // 1000}k" if abs(v) >= 10_000 and v % 1000 == 0 else str(v)


def _fmt_tick(value: float, step: float) -> str:
    """A loss tick label with just enough significant digits to tell ticks ``step`` apart."""
    if value == 0 or step <= 0:
        return "0" if value == 0 else f"{value:.3g}"
    digits = max(1, math.floor(math.log10(abs(value))) - math.floor(math.log10(step)) + 1)
    return f"{value:.{digits}g}"


class TrainingPlot(QWidget):
    """Training loss (raw, faint, and its moving average) against the left axis, validation metrics
    (0..1) against the right axis, dashed event marks and the best validation step."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REPAINT_INTERVAL_MS)
        self._timer.timeout.connect(self.update)
        self._reset()

    # ---------------------------------------------------------------- data
    def _reset(self) -> None:
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._smoothed: list[float] = []
        self._index: list[int] = []  # running number of each stored point among all finite losses
        self._count = 0  # finite losses seen
        self._stride = 1  # stored points are those whose running number is a multiple of this (+ the newest)
        self._ema: float | None = None
        self._validation: dict[str, tuple[list[int], list[float]]] = {}
        self._marks: list[tuple[int, str]] = []
        self._best: int | None = None

    def add_loss(self, step: int, loss: float) -> None:
        """Record the training loss of ``step``; non-finite values are ignored."""
        value = float(loss)
        if not math.isfinite(value):
            return
        self._ema = value if self._ema is None else self._ema + EMA_ALPHA * (value - self._ema)
        if self._index and self._index[-1] % self._stride:  # the newest point was kept only as the tail
            for seq in (self._steps, self._losses, self._smoothed, self._index):
                seq.pop()
        self._steps.append(int(step))
        self._losses.append(value)
        self._smoothed.append(self._ema)
        self._index.append(self._count)
        self._count += 1
        if len(self._steps) > MAX_LOSS_POINTS:
            self._decimate()
        self._schedule_update()

    def _decimate(self) -> None:
        """Double the stride: keep every second stored point, plus the first and the newest."""
        self._stride *= 2
        keep = [i for i, n in enumerate(self._index) if n % self._stride == 0]
        if keep[-1] != len(self._index) - 1:
            keep.append(len(self._index) - 1)
        self._steps, self._losses, self._smoothed, self._index = (
            [seq[i] for i in keep] for seq in (self._steps, self._losses, self._smoothed, self._index)
        )

    def add_validation(self, step: int, metrics: dict[str, float]) -> None:
        """Record validation ``metrics`` (values in 0..1, one curve per name) measured at ``step``."""
        for name, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                steps, values = self._validation.setdefault(str(name), ([], []))
                steps.append(int(step))
                values.append(value)
        self._schedule_update()

    def mark(self, step: int, text: str) -> None:
        """A dashed vertical line labelled ``text`` at ``step`` (e.g. "v2: retrain")."""
        self._marks.append((int(step), str(text)))
        self._schedule_update()

    def set_best(self, step: int | None) -> None:
        """Highlight the best validation step (``None``: none)."""
        self._best = None if step is None else int(step)
        self._schedule_update()

    def clear(self) -> None:
        """Forget all curves, marks and the best step."""
        self._reset()
        self._schedule_update()

    def series(self) -> dict:
        """Copies of the stored data: loss ``steps``/``losses``/``smoothed``, ``validation`` per metric
        (``{"steps": [...], "values": [...]}``), ``marks``, ``best`` and the decimation ``stride``."""
        return {
            "steps": list(self._steps),
            "losses": list(self._losses),
            "smoothed": list(self._smoothed),
            "validation": {k: {"steps": list(s), "values": list(v)} for k, (s, v) in self._validation.items()},
            "marks": list(self._marks),
            "best": self._best,
            "stride": self._stride,
        }

    def _summary_parts(self) -> list[tuple[str, str]]:
        """(colour, text) pieces of the legend line."""
        parts = []
        if self._ema is not None:
            parts.append((LOSS_COLOR, f"loss {self._ema:.3g}"))
        for i, (name, (steps, values)) in enumerate(self._validation.items()):
            text = f"{name} {values[-1]:.2f}"
            if i == 0 and self._best is not None and self._best in steps:
                best = values[len(steps) - 1 - steps[::-1].index(self._best)]
                text += f" (best {best:.2f} @ step {self._best})"
            parts.append((METRIC_COLORS[i % len(METRIC_COLORS)], text))
        if self._best is not None and not any("(best" in t for _, t in parts):
            parts.append((BEST_COLOR, f"best @ step {self._best}"))
        return parts

    def summary(self) -> str:
        """The legend line: smoothed loss, latest metrics, best value of the first metric."""
        return _SEP.join(text for _, text in self._summary_parts())

    # ------------------------------------------------------------ painting
    def sizeHint(self) -> QSize:
        return QSize(360, 180)

    def minimumSizeHint(self) -> QSize:
        return QSize(120, 140)

    def _schedule_update(self) -> None:
        """Repaint soon, at most once per ``REPAINT_INTERVAL_MS``."""
        if not self._timer.isActive():
            self._timer.start()

    def _x_range(self) -> tuple[float, float] | None:
        xs = list(self._steps[:1]) + list(self._steps[-1:]) + [s for s, _ in self._marks]
        xs += [s for steps, _ in self._validation.values() for s in (steps[0], steps[-1])]
        if self._best is not None:
            xs.append(self._best)
        if not xs:
            return None
        lo, hi = float(min(xs)), float(max(xs))
        return (lo - 0.5, hi + 0.5) if hi - lo < 1 else (lo, hi)

    def _loss_range(self) -> tuple[float, float] | None:
        if not self._smoothed:
            return None
        sm = np.asarray(self._smoothed)
        lo, hi = np.percentile(sm, [2, 98])
        lo, hi = float(min(lo, sm[-1])), float(max(hi, sm[-1]))  # never hide the current value
        span = hi - lo
        pad = span * 0.08 if span > 0 else max(abs(hi) * 0.1, 1e-3)
        lo2 = lo - pad
        return (max(lo2, 0.0) if lo >= 0 else lo2), hi + pad

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, p: QPainter) -> None:
        pal = self.palette()
        fg = pal.color(QPalette.ColorRole.WindowText)
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Window))
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = QFontMetrics(self.font())
        w, h, lh = self.width(), self.height(), fm.height()
        self._draw_legend(p, fm, QRectF(4, 2, w - 8, lh), fg)

        xr, yr = self._x_range(), self._loss_range()
        y_ticks = _nice_ticks(*yr) if yr else []
        y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 0.0
        y_labels = [_fmt_tick(t, y_step) for t in y_ticks]
        left = 8 + max([fm.horizontalAdvance(s) for s in y_labels] + [fm.horizontalAdvance("0.00")])
        right = 8 + fm.horizontalAdvance("0.5")
        plot = QRectF(left, lh + 8, w - left - right, h - 2 * lh - 14)
        if plot.width() < 10 or plot.height() < 10:
            return
        faint, axis = QColor(fg), QColor(fg)
        faint.setAlpha(35)
        axis.setAlpha(130)
        p.setPen(QPen(axis, 1))
        p.drawRect(plot)
        if xr is None:
            p.drawText(plot, int(Qt.AlignmentFlag.AlignCenter), "waiting for training…")
            return

        def px(s):
            return plot.left() + (np.asarray(s, float) - xr[0]) / (xr[1] - xr[0]) * plot.width()

        pad = 4.0

        def py_metric(v):
            return plot.bottom() - pad - np.clip(np.asarray(v, float), 0, 1) * (plot.height() - 2 * pad)

        # x ticks and grid
        x_ticks = _nice_ticks(xr[0], xr[1], count=max(2, int(plot.width() // 90)), integer=True)
        for t in x_ticks:
            x = float(px(t))
            p.setPen(QPen(faint, 1))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            p.setPen(fg)
            label = _fmt_step(t)
            tw = fm.horizontalAdvance(label)
            p.drawText(QPointF(min(max(x - tw / 2, 0), w - tw), plot.bottom() + 3 + fm.ascent()), label)
        # left (loss) ticks
        if yr:

            def py(v):
                return plot.bottom() - (np.asarray(v, float) - yr[0]) / (yr[1] - yr[0]) * plot.height()

            for t, label in zip(y_ticks, y_labels):
                y = float(py(t))
                p.setPen(QPen(faint, 1))
                p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
                p.setPen(fg)
                p.drawText(QPointF(plot.left() - 4 - fm.horizontalAdvance(label), y + fm.ascent() / 2 - 1), label)
        # right (metric) ticks
        if self._validation:
            p.setPen(fg)
            for t in (0.0, 0.5, 1.0):
                p.drawText(QPointF(plot.right() + 4, float(py_metric(t)) + fm.ascent() / 2 - 1), f"{t:g}")

        # loss curves
        p.save()
        p.setClipRect(plot)
        if yr:
            xs = px(self._steps).tolist()
            raw = QColor(LOSS_COLOR)
            raw.setAlpha(50)
            p.setPen(QPen(raw, 1))
            p.drawPolyline(QPolygonF([QPointF(x, y) for x, y in zip(xs, py(self._losses).tolist())]))
            p.setPen(QPen(QColor(LOSS_COLOR), 2))
            p.drawPolyline(QPolygonF([QPointF(x, y) for x, y in zip(xs, py(self._smoothed).tolist())]))
            p.setBrush(QColor(LOSS_COLOR))
            p.drawEllipse(QPointF(xs[-1], float(py(self._smoothed[-1]))), 2.5, 2.5)
        p.restore()

        # marks and best
        small = QFont(self.font())
        if small.pointSizeF() > 0:
            small.setPointSizeF(small.pointSizeF() * 0.85)
        sfm = QFontMetrics(small)
        p.setFont(small)
        for i, (step, text) in enumerate(self._marks):
            x = float(px(step))
            p.setPen(QPen(axis, 1, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            tw = sfm.horizontalAdvance(text)
            tx = x + 3 if x + 3 + tw <= plot.right() else x - 3 - tw
            p.setPen(fg)
            p.drawText(QPointF(tx, plot.top() + 2 + sfm.ascent() * (1 + i % 2)), text)
        p.setFont(self.font())
        if self._best is not None:
            x, gold = float(px(self._best)), QColor(BEST_COLOR)
            gold.setAlpha(110)
            p.setPen(QPen(gold, 2))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(BEST_COLOR))
            p.drawPolygon(
                QPolygonF([QPointF(x - 5, plot.top()), QPointF(x + 5, plot.top()), QPointF(x, plot.top() + 7)])
            )

        # validation curves
        p.save()
        p.setClipRect(plot.adjusted(-5, -5, 5, 5))
        for i, (steps, values) in enumerate(self._validation.values()):
            color = QColor(METRIC_COLORS[i % len(METRIC_COLORS)])
            pts = [QPointF(x, y) for x, y in zip(px(steps).tolist(), py_metric(values).tolist())]
            p.setPen(QPen(color, 1.5))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawPolyline(QPolygonF(pts))
            p.setBrush(color)
            for pt in pts:
                p.drawEllipse(pt, 3.0, 3.0)
            if self._best is not None and i == 0 and self._best in steps:
                p.setPen(QPen(QColor(BEST_COLOR), 2))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawEllipse(pts[len(steps) - 1 - steps[::-1].index(self._best)], 5.5, 5.5)
        p.restore()

    def _draw_legend(self, p: QPainter, fm: QFontMetrics, rect: QRectF, fg: QColor) -> None:
        """Colour swatch + text per series, cut with an ellipsis where the line is full."""
        x, mid, base = rect.left(), rect.center().y(), rect.top() + fm.ascent()
        for color, text in self._summary_parts():
            if x + 16 > rect.right():
                break
            p.setPen(QPen(QColor(color), 3))
            p.drawLine(QPointF(x, mid), QPointF(x + 11, mid))
            x += 15
            p.setPen(fg)
            room = int(rect.right() - x)
            shown = fm.elidedText(text, Qt.TextElideMode.ElideRight, room)
            p.drawText(QPointF(x, base), shown)
            if shown != text:
                break
            x += fm.horizontalAdvance(text) + fm.horizontalAdvance("   ")
