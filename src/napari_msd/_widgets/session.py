"""State shared by the napari-msd docks of one viewer: a plain dataclass, no Qt."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


@dataclass
class Session:
    """The current model of a viewer's docks.

    ``arch`` and ``model_config`` rebuild the network (``napari_msd.models.build_model(arch, model_config)``);
    ``class_names[i]`` / ``class_colors[i]`` describe label ``i + 1``; ``model_path`` is the file the model came
    from (``None`` for a new, untrained model) and ``metadata`` that file's ``ModelMetadata``.
    """

    arch: str = "msd"
    model_config: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    class_colors: list[str] = field(default_factory=list)
    model_path: Path | None = None
    metadata: Any = None

    def build_model(self, device: str = "cpu"):
        """A fresh (untrained) network of the current architecture."""
        from napari_msd.models import build_model

        return build_model(self.arch, self.model_config).to(device)


def get_session(viewer: Any) -> Session:
    """The session shared by all docks of ``viewer`` (created on first use, dropped with the viewer)."""
    try:
        return _SESSIONS[viewer]
    except KeyError:
        return _SESSIONS.setdefault(viewer, Session())
