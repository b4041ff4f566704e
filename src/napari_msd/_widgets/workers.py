"""Background work for the docks: core generators run in napari thread workers, rendered in the main thread.

:func:`start` wraps a generator function in a napari ``thread_worker``: yielded events reach ``on_event`` in
the main thread (the only place layers and widgets are touched), an exception becomes one notification line,
and ``on_done`` runs in the main thread however the work ended. The returned :class:`Work` can be asked to
end (``cancel``) and waited for (``wait``): docks call :func:`on_viewer_close` so closing the viewer during
training or prediction ends the work cleanly instead of leaving a thread running.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QCoreApplication, QEvent, QObject, QTimer
from qtpy.QtWidgets import QWidget

from napari_msd.errors import one_line


class Work:
    """One running generator: ``cancel()`` asks it to end at its next event, ``wait()`` blocks until it has."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.done = threading.Event()  # the thread has ended
        self.finished = False  # ... and its end was handled in the main thread (``on_done`` ran)
        self.worker: Any = None
        self.error: BaseException | None = None
        self.on_cancel: list[Callable[[], None]] = []

    def cancel(self) -> None:
        self.cancelled.set()
        for callback in self.on_cancel:
            callback()

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait for the thread to finish (processing Qt events meanwhile); True if it did."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not self.done.wait(0.02):
                QCoreApplication.processEvents()
                if deadline.is_set():
                    return False
            QCoreApplication.processEvents()
            return True
        finally:
            timer.cancel()

    @property
    def running(self) -> bool:
        """Until the work has ended and the main thread has handled its end."""
        return not self.finished


BACKGROUND_NICENESS = 10
# Python hands the GIL between threads every 5 ms by default; with training, the prefetcher and the live
# preview all running Python between torch calls, the event loop then waits its turn for each small callback
# and stalls for a few hundred ms. 1 ms keeps it responsive; torch releases the GIL while it computes.
GIL_SWITCH_INTERVAL = 0.001


def lower_thread_priority(increment: int = BACKGROUND_NICENESS) -> bool:
    """Make the calling thread (and the compute threads it starts, e.g. torch's OpenMP team) yield the CPU to
    the interface: on Linux, raise its nice value. Returns whether it could; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + increment)  # pooled threads are reused:
        if os.getpriority(os.PRIO_PROCESS, tid) < target:  # relative to the process, never lowered twice
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError:
        return False
    return True


def start(generator: Callable[[Work], Iterator[Any]], on_event: Callable[[Any], None],
          on_done: Callable[[Work], None], name: str) -> Work:
    """Run ``generator(work)`` in a thread worker; see the module docstring. The thread runs at a lower
    priority than the interface, and Python switches threads every millisecond (not 5), so neither a busy
    CPU nor busy Python threads starve napari's event loop."""
    work = Work()
    if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    # A full garbage collection walks every object napari and Qt made (~1e6): 200-300 ms with the GIL held, a
    # visible freeze, and the allocations of training trigger one every few seconds. Objects that exist now
    # live as long as the viewer anyway; freezing them keeps collections to what the work allocates.
    gc.freeze()

    def run() -> Iterator[Any]:
        lower_thread_priority()
        try:
            for event in generator(work):
                if work.cancelled.is_set():
                    return
                yield event
        except Exception as err:  # noqa: BLE001 -- reported in the main thread by _errored
            work.error = err
        finally:
            work.done.set()

    def finished() -> None:
        # events the worker yielded may still be queued (Qt does not order signals of different senders):
        # render them before the end
        QCoreApplication.sendPostedEvents()
        generator_object = getattr(worker, "_gen", None)
        if generator_object is not None:  # abandoned by worker.quit() (napari does that when the viewer closes)
            generator_object.close()  # the thread has ended: run its cleanup (finally blocks) here
        work.done.set()
        try:
            if work.error is not None:
                show_error(f"{name} failed: {one_line(work.error, typed=True)}")
            on_done(work)
        finally:
            work.finished = True

    worker = create_worker(run, _start_thread=False)
    worker.yielded.connect(on_event)
    worker.finished.connect(finished)
    work.worker = worker
    worker.start()
    return work


class _CloseFilter(QObject):
    def __init__(self, callback: Callable[[], None], parent: QObject):
        super().__init__(parent)
        self.callback = callback

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 -- Qt API
        if event.type() == QEvent.Type.Close:
            self.callback()
        return False


def on_window_close(widget: QWidget, callback: Callable[[], None]) -> None:
    """Call ``callback`` when the main window holding the dock ``widget`` closes (before its layers go away),
    and when the application quits."""

    def install() -> None:
        window = widget.window()
        if window is not widget:
            window.installEventFilter(_CloseFilter(callback, widget))

    QTimer.singleShot(0, install)  # once napari has docked the widget into its main window
    app = QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(callback)
