"""Background work for the docks: core generators run in napari thread workers, rendered in the main thread.

:func:`start` wraps a generator function in a napari ``thread_worker``: yielded events reach ``on_event`` in
the main thread (the only place layers and widgets are touched), an exception becomes one notification line,
and ``on_done`` runs in the main thread however the work ended. The returned :class:`Work` can be asked to
end (``cancel``) and waited for (``wait``): docks call :func:`on_window_close` so closing the viewer during
training or prediction ends the work cleanly instead of leaving a thread running.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QCoreApplication, QEvent, QObject, QTimer
from qtpy.QtWidgets import QWidget

from napari_msd.errors import one_line


class Work:
    """One running generator: ``cancel()`` asks it to end at its next event, ``wait()`` blocks until it has
    ended and ``on_done`` ran."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.done = threading.Event()  # the thread has ended
        self.finished = False  # ... and its end was handled in the main thread (``on_done`` ran)
        self._ending = False  # ``on_done`` is running (a wait() from inside it returns at once)
        self.worker: Any = None
        self.error: BaseException | None = None
        self.on_cancel: list[Callable[[], None]] = []

    def cancel(self) -> None:
        self.cancelled.set()
        for callback in self.on_cancel:
            callback()

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait for the thread to finish and ``on_done`` to run (processing Qt events meanwhile); True if they did."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not (self.finished or self._ending):
                if self.done.wait(0.02):
                    time.sleep(0.001)  # the thread has ended: its finished signal is on its way
                QCoreApplication.processEvents()
                if deadline.is_set():
                    return False
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


def keep_torch_off_the_main_thread() -> None:
    """One torch compute thread for napari's main thread, set before it runs any torch operation.

    Once the main thread has run a torch operation with a team of threads, torch's CPU kernels on every other
    thread run at about half speed (measured: a training thread made 2.8 steps/s beside an idle main thread,
    1.2 after one operation on it; see benchmarks/responsiveness.py). The docks run their heavy work in workers
    (:func:`start` gives each its full team) and only small things on the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    import torch

    torch.set_num_threads(1)


def _full_team() -> None:
    """Give the calling worker thread a compute thread per usable core (new threads inherit the main thread's
    one, see :func:`keep_torch_off_the_main_thread`); training then sizes its own team to the free cores."""
    if "torch" not in sys.modules:
        return
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))


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


def start(
    generator: Callable[[Work], Iterator[Any]],
    on_event: Callable[[Any], None],
    on_done: Callable[[Work], None],
    name: str,
    error_message: Callable[[BaseException], str] | None = None,
) -> Work:
    """Run ``generator(work)`` in a thread worker; see the module docstring. An exception it raises is shown as
    ``error_message(err)`` (default: ``"<name> failed: <its one line>"``) and kept in ``work.error``. The thread
    runs at a lower priority than the interface, and Python switches threads every millisecond (not 5), so
    neither a busy CPU nor busy Python threads starve napari's event loop."""
    work = Work()
    if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    # A full garbage collection walks every object napari and Qt made (~1e6): 200-300 ms with the GIL held, a
    # visible freeze, and the allocations of training trigger one every few seconds. Objects that exist now
    # live as long as the viewer anyway; freezing them keeps collections to what the work allocates.
    gc.freeze()

    def run() -> Iterator[Any]:
        lower_thread_priority()
        _full_team()
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
        work._ending = True
        try:
            if work.error is not None:
                show_error(
                    error_message(work.error)
                    if error_message is not None
                    else f"{name} failed: {one_line(work.error, typed=True)}"
                )
            on_done(work)
        finally:
            work.finished = True

    worker = create_worker(run, _start_thread=False)
    worker.yielded.connect(on_event)
    worker.finished.connect(finished)
    work.worker = worker
    worker.start()
    return work


_CLOSE_FILTER = "napari_msd_close_filter"


class _CloseFilter(QObject):
    """One per main window: calls the docks' callbacks when the window closes (see :func:`on_window_close`)."""

    def __init__(self, window: QObject):
        super().__init__(window)
        self.setObjectName(_CLOSE_FILTER)
        self.callbacks: list[Callable[[], None]] = []

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 -- Qt API
        if event.type() != QEvent.Type.Close or not self.callbacks:
            return False
        if event.spontaneous():  # the close button: napari may ask to confirm and keep the window open
            obj.event(event)  # so napari decides first, and the event is handled here
            if event.isAccepted():
                self._call()
            return True
        self._call()  # closed by code (viewer.close(), File > Quit once confirmed): before napari removes layers
        return False

    def _call(self) -> None:
        for callback in list(self.callbacks):
            callback()


def on_window_close(widget: QWidget, callback: Callable[[], None]) -> None:
    """Call ``callback`` when the main window holding the dock ``widget`` closes, and when the application quits.
    A close by code calls it before its layers go away; the close button only once napari accepted the close
    (it may ask to confirm). One event filter per window serves every dock."""

    def install() -> None:
        window = widget.window()
        if window is widget:
            return
        close_filter = window.findChild(QObject, _CLOSE_FILTER)
        if not isinstance(close_filter, _CloseFilter):
            close_filter = _CloseFilter(window)
            window.installEventFilter(close_filter)
        callbacks = close_filter.callbacks
        callbacks.append(callback)
        widget.destroyed.connect(lambda *_: callback in callbacks and callbacks.remove(callback))

    QTimer.singleShot(0, install)  # once napari has docked the widget into its main window
    app = QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(callback)
