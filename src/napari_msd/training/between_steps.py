"""Work handed to the training thread, run between two training steps.

On a CPU, a live preview's forward pass in a thread of its own starts a second team of compute threads
next to the training step's; on 2 cores the two teams collapse each other (the dock trained at half the
command line's speed with the preview on). Queued here instead, the preview runs on the training thread,
between steps (or while paused), with the training's own threads: it costs exactly its compute time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class BetweenSteps:
    """A queue of calls that the training loop :meth:`serve` s; callers get a :class:`~concurrent.futures.Future`.

    Before a loop :meth:`open` s, a call runs at once on the caller's thread. Calls still queued when the loop
    closes are cancelled (their futures raise ``CancelledError``), so a waiting caller never hangs, and so are
    calls made after it closed, until :meth:`finish`: what follows the loop (the last validation, measuring the halo)
    is still computing, and a call run beside it would be the second team of threads this queue exists to avoid.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._state = "before"  # "before" the loop, "open", or "closed"

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._state == "open":
                self._calls.put((fn, future))
                return future
            if self._state == "closed":
                future.cancel()
                return future
        _run(fn, future)
        return future

    def open(self) -> None:
        with self._lock:
            self._state = "open"

    def finish(self) -> None:
        """What followed the loop is done: calls run at once again, as before it."""
        with self._lock:
            self._state = "before"

    def close(self) -> None:
        with self._lock:
            self._state = "closed"
        while True:
            try:
                _, future = self._calls.get_nowait()
            except queue.Empty:
                return
            future.cancel()

    def serve(self) -> int:
        """Run every queued call, in order, on this thread; returns how many ran."""
        ran = 0
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return ran
            ran += _run(fn, future)


def _run(fn: Callable[[], Any], future: Future) -> bool:
    if not future.set_running_or_notify_cancel():
        return False
    try:
        future.set_result(fn())
    except BaseException as err:  # handed to the caller, not raised in the training loop
        future.set_exception(err)
    return True


__all__ = ["BetweenSteps"]
