"""A combo box listing the viewer's layers of one type, kept in step as layers are added, removed or renamed."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSignalBlocker
from qtpy.QtWidgets import QComboBox, QWidget


class LayerCombo(QComboBox):
    """Layers of ``layer_type`` by name; :meth:`layer` is the chosen one (or None). ``skip`` hides layers
    for which it returns True (e.g. the live preview)."""

    def __init__(self, viewer: Any, layer_type: type, parent: QWidget | None = None, skip: Any = None):
        super().__init__(parent)
        self.viewer, self.layer_type, self.skip = viewer, layer_type, skip
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        events.inserted.connect(self.refresh)
        events.removed.connect(self.refresh)
        events.reordered.connect(self.refresh)
        events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch_name(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh)

    def layers(self) -> list[Any]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, self.layer_type) and not (self.skip and self.skip(layer))
        ]

    def refresh(self, *_: Any) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.currentText()
        names = [layer.name for layer in self.layers()]
        with QSignalBlocker(self):
            self.clear()
            self.addItems(names)
            if current in names:
                self.setCurrentIndex(names.index(current))
        if current not in names:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Any:
        name = self.currentText()
        for layer in self.layers():
            if layer.name == name:
                return layer
        return None

    def choose(self, layer: Any) -> None:
        """Select ``layer`` (by its name)."""
        index = self.findText(layer.name)
        if index >= 0:
            self.setCurrentIndex(index)
