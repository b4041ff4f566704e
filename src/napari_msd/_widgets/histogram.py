"""``Histogram``: a small bar chart of one numeric column (object sizes, intensities), drawn with ``QPainter``."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPalette
from qtpy.QtWidgets import QSizePolicy, QWidget

BAR_COLOR = "#4a90e2"
BINS = 24


class Histogram(QWidget):
    """Counts of ``values`` in :data:`BINS` equal bins between their finite minimum and maximum; the range and the
    largest count are written along the axes. :meth:`set_values` replaces the data."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.counts = np.zeros(0, int)
        self.edges = np.zeros(0)
        self.title = ""
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(110)

    def sizeHint(self) -> QSize:  # noqa: N802 -- Qt API
        return QSize(260, 120)

    def set_values(self, values: np.ndarray, title: str = "") -> None:
        finite = np.asarray(values, float)
        finite = finite[np.isfinite(finite)]
        self.title = title
        if finite.size == 0:
            self.counts, self.edges = np.zeros(0, int), np.zeros(0)
        else:
            lo, hi = float(finite.min()), float(finite.max())
            self.counts, self.edges = np.histogram(finite, bins=BINS, range=(lo, hi if hi > lo else lo + 1))
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 -- Qt API
        painter = QPainter(self)
        text = self.palette().color(QPalette.ColorRole.WindowText)
        painter.setPen(text)
        metrics = painter.fontMetrics()
        line = metrics.height()
        plot = QRectF(4, line + 2, self.width() - 8, self.height() - 2 * line - 6)
        if self.counts.size == 0:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "no objects")
            painter.end()
            return
        top = int(self.counts.max())
        painter.drawText(QRectF(4, 0, self.width() - 8, line), Qt.AlignmentFlag.AlignLeft, f"{self.title}")
        painter.drawText(QRectF(4, 0, self.width() - 8, line), Qt.AlignmentFlag.AlignRight, f"max {top}")
        width = plot.width() / len(self.counts)
        for i, count in enumerate(self.counts):
            height = plot.height() * count / max(top, 1)
            painter.fillRect(
                QRectF(plot.left() + i * width, plot.bottom() - height, max(width - 1, 1), height), QColor(BAR_COLOR)
            )
        painter.setPen(text)
        painter.drawLine(int(plot.left()), int(plot.bottom()), int(plot.right()), int(plot.bottom()))
        below = QRectF(4, plot.bottom() + 2, self.width() - 8, line)
        painter.drawText(below, Qt.AlignmentFlag.AlignLeft, _fmt(self.edges[0]))
        painter.drawText(below, Qt.AlignmentFlag.AlignRight, _fmt(self.edges[-1]))
        painter.end()


def _fmt(value: float) -> str:
    """A compact axis number: ``12``, ``3.5``, ``1.2e+06``."""
    return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.2g}"
