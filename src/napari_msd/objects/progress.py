"""Progress events of the object generators, and a helper that runs such a generator to its result.

Every long computation in :mod:`napari_msd.objects` is a generator that yields :class:`Progress` once per
block (or object) and *returns* its result, so a GUI worker (napari's ``thread_worker``: ``yielded`` per
event, ``returned`` with the result) or the command line can drive it unchanged; :func:`run_to_end` just
drains one and hands back the result.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

STAGES = {
    "label": "labelling blocks",
    "write": "writing objects",
    "split": "splitting objects",
    "measure": "measuring objects",
    "boxes": "finding objects",
}


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of one stage (see :data:`STAGES`) are finished."""

    stage: str
    done: int
    total: int

    @property
    def text(self) -> str:
        return f"{STAGES.get(self.stage, self.stage)}: {self.done}/{self.total}"


def run_to_end(events: Generator[Any, Any, T]) -> T:
    """Drain a generator of progress events and return what it returns."""
    while True:
        try:
            next(events)
        except StopIteration as stop:
            return stop.value
