"""Training in a child process: the Train dock's runs, at the speed the command line gets.

In napari's process a training thread made about half the steps the same training made in a process of its own,
even with the viewer idle (``benchmarks/responsiveness.py``): torch's CPU kernels run slower on a second thread
once the process's main thread has done torch work (the docks build networks there). In a child process the
engine runs on its main thread, as ``napari-msd train`` does, and a crash in training (out of memory, a native
error) ends the child, not napari.

:class:`TrainingProcess` starts the child (``python -m napari_msd.training.remote``) on first use and reuses it for
every later run, so a Retrain starts as quickly as a thread would. :meth:`TrainingProcess.run` sends the labels,
configuration and starting weights and returns a :class:`RemoteRun`: iterate it (on one thread) for the engine's
own typed events; pause, resume, stop and :meth:`RemoteRun.preview` work from any other thread. A preview
predicts a region of the image with the weights as they are, in the child between two steps (the training's
threads, never a second team beside them). The finished network comes back as :attr:`RemoteRun.result`.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import numpy as np

from ..errors import NapariMsdError, one_line
from .events import MemberEvent, Paused, TrainingFinished, TrainStep
from .sampling import TrainingData

# Messages are pickled here and sent as bytes, never with the connection's own pickler: torch registers tensor
# reductions there that share memory between processes of one multiprocessing family, which a child started by
# subprocess is not.
START_TIMEOUT = 120.0  # s for the child to import torch and connect (a cold disk cache can be slow)


class TrainingProcessError(NapariMsdError):
    """The training process could not start or ended unexpectedly."""


@dataclass
class Result:
    """The trained network and its metadata, when the run gave a usable one (not collapsed, beat its parent)."""

    model: Any
    metadata: Any


@dataclass
class PreviewResult:
    region: tuple[slice, ...]
    labels: np.ndarray  # uint8 classes 1..K of the region
    seconds: float  # the forward's time in the child (training time spent on it)


def predict_view(
    trainer: Any, image: Any, region: tuple[slice, ...], halo: int, model: Any = None
) -> tuple[PreviewResult, Any]:
    """The live preview's forward, run between two training steps: ``region`` of ``image`` predicted with the
    trainer's current weights, copied into ``model`` (a network kept across a run's previews; None makes one).
    Returns the preview and that network."""
    from ..inference.predictor import Predictor

    start = time.perf_counter()
    model = trainer.snapshot(into=model)
    predictor = Predictor(model, trainer.metadata(), device=trainer.device)
    probs = predictor.predict_region(image, region, halo=min(halo, predictor.halo_radius))
    labels = (probs.argmax(0) + 1).astype(np.uint8)
    return PreviewResult(region, labels, time.perf_counter() - start), model


class RemoteRun:
    """One training in the child: iterate for its events; control it from any thread."""

    def __init__(self, process: TrainingProcess, run_id: int, pretrained: Any = None):
        self._process = process
        self.run_id = run_id
        self.pretrained = pretrained  # the self-supervised body the run starts from (as Trainer.pretrained)
        self.step = 0
        self.paused = False
        self.collapsed: str | None = None
        self.kept_parent = False
        self.result: Result | None = None
        self._previews: dict[int, Future[PreviewResult]] = {}
        self._ended = False

    # -- control (any thread) ---------------------------------------------------------------------
    def stop(self) -> None:
        self._process._send(("stop", self.run_id))

    def pause(self) -> None:
        self.paused = True
        self._process._send(("pause", self.run_id))

    def resume(self) -> None:
        self.paused = False
        self._process._send(("resume", self.run_id))

    def skip_member(self) -> None:
        """An ensemble's training: leave the member in training out and go on with the next (else nothing)."""
        self._process._send(("skip_member", self.run_id))

    def preview(self, region: tuple[slice, ...], halo: int) -> Future[PreviewResult]:
        """Predict ``region`` of the image with the current weights between two steps; the future is cancelled
        when the run ends first."""
        future: Future[PreviewResult] = Future()
        if self._ended:
            future.cancel()
            return future
        request = self._process._request_id()
        self._previews[request] = future
        self._process._send(("preview", self.run_id, request, region, halo))
        return future

    # -- events (one thread) ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                kind, *rest = self._process._recv()
                if kind == "event":
                    event = rest[1]
                    self._note(event)
                    yield event
                elif kind == "preview":
                    future = self._previews.pop(rest[0], None)
                    if future is not None and not future.done():
                        if rest[1] is None:
                            future.cancel()
                        else:
                            future.set_result(rest[1])
                elif kind == "result":
                    self.result = Result(*rest)
                elif kind == "end":
                    if rest[0] is not None:
                        raise rest[0]
                    return
        finally:
            self._ended = True
            for future in self._previews.values():
                future.cancel()
            self._previews.clear()

    def _note(self, event: Any) -> None:
        if isinstance(event, MemberEvent) and not isinstance(event.event, TrainingFinished):
            event = event.event  # an ensemble member's; its own TrainingFinished is not the run's
        if isinstance(event, TrainStep):
            self.step = event.step
        elif isinstance(event, Paused):
            self.paused = event.paused
        elif isinstance(event, TrainingFinished):
            self.collapsed, self.kept_parent = event.collapsed, event.kept_parent


class TrainingProcess:
    """A child process that trains, started on first use and reused; :meth:`close` ends it.

    ``niceness`` is added to the child's nice value (POSIX), so that the viewer keeps the CPU it needs.
    One run at a time.
    """

    def __init__(self, niceness: int = 0):
        self.niceness = niceness
        self._child: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._start_lock = threading.RLock()  # start and close wait for each other
        self._runs = 0
        self._requests = 0

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.poll() is None and self._conn is not None

    def start(self) -> None:
        """Start the child now (it takes a second or two to import torch) unless it runs already; safe to call
        from any thread (a dock starts it in the background before the first run)."""
        with self._start_lock:
            if not self.alive:
                self._start()

    def _start(self) -> None:
        self.close()
        authkey = os.urandom(32)
        listener = Listener(authkey=authkey)
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "napari_msd.training.remote", str(listener.address), str(self.niceness)],
                stdin=subprocess.PIPE,
            )
            assert child.stdin is not None
            child.stdin.write(authkey.hex().encode() + b"\n")
            child.stdin.close()
            self._conn = _accept(listener, child, START_TIMEOUT)
            self._child = child
        finally:
            listener.close()

    def run(
        self,
        data: Sequence[TrainingData],
        config: Any,
        init: Any = None,
        replay: Sequence[TrainingData] = (),
    ) -> RemoteRun:
        """Start a :class:`~napari_msd.training.engine.Trainer` ``(data, config, init=init, replay=replay)`` in
        the child (an :class:`~napari_msd.training.ensemble.EnsembleTrainer` for an ensemble, whose members' events
        come wrapped in :class:`~napari_msd.training.events.MemberEvent`); previews predict ``data[0].image``."""
        self.start()
        self._runs += 1
        run = RemoteRun(self, self._runs, pretrained=getattr(config, "pretrained", None))
        self._send(("run", self._runs, list(data), config, init, list(replay)))
        return run

    def close(self, timeout: float = 5.0) -> None:
        """End the child (a run in it stops without a result)."""
        with self._start_lock:
            self._close(timeout)

    def _close(self, timeout: float) -> None:
        child, conn, self._child, self._conn = self._child, self._conn, None, None
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send_bytes(pickle.dumps(("quit",)))
            except OSError:
                pass
        if child is not None:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if conn is not None:
            conn.close()

    def _request_id(self) -> int:
        with self._send_lock:
            self._requests += 1  # unique over the child's life: a late answer never meets a newer request
            return self._requests

    def _send(self, message: tuple) -> None:
        conn = self._conn
        if conn is None:
            return  # closed: the run has ended or is ending
        try:
            with self._send_lock:
                conn.send_bytes(pickle.dumps(message))
        except OSError:
            pass  # the child has gone; the event reader reports it

    def _recv(self) -> tuple:
        conn, child = self._conn, self._child
        if conn is None or child is None:
            raise TrainingProcessError("the training process was closed; start the training again")
        try:
            return pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            code = child.wait()
            self._child = self._conn = None
            raise TrainingProcessError(
                f"the training process ended unexpectedly (exit code {code}); "
                "train again, with smaller patches or batches if memory ran out"
            ) from None


def _accept(listener: Listener, child: subprocess.Popen, timeout: float) -> Connection:
    """The child's connection, or an error if it exits or does not connect in ``timeout`` s."""
    box: queue.Queue = queue.Queue()

    def accept() -> None:
        try:
            box.put(listener.accept())
        except BaseException as err:  # noqa: BLE001 -- the listener closed under it, or a bad key
            box.put(err)

    threading.Thread(target=accept, name="napari-msd accept", daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = box.get(timeout=0.05)
        except queue.Empty:
            if child.poll() is not None or time.monotonic() > deadline:
                if child.poll() is None:
                    child.kill()
                raise TrainingProcessError(
                    f"the training process did not start (exit code {child.wait()}); "
                    "check that napari-msd and torch import in this Python"
                ) from None
            continue
        if isinstance(got, BaseException):
            raise TrainingProcessError(f"the training process did not connect: {one_line(got)}")
        return got


# -- the child ----------------------------------------------------------------------------------------------------
class _Child:
    """Reads the parent's messages on a thread of its own; trains on the main thread."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.lock = threading.Lock()
        self.runs: queue.Queue = queue.Queue()
        self.trainer: Any = None
        self.run_id = 0
        self.early: set[tuple[int, str]] = set()  # (run, "pause" / "stop") asked before its trainer was built
        self.quitting = False
        self.image: Any = None
        self._model: Any = None  # the preview's network, reused across previews of a run

    def send(self, message: tuple) -> None:
        try:
            data = pickle.dumps(message)
            with self.lock:
                self.conn.send_bytes(data)
        except (OSError, pickle.PicklingError):
            pass

    def read(self) -> None:
        while True:
            try:
                kind, *rest = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                kind, rest = "quit", []
            if kind == "quit":
                self.quitting = True
                if self.trainer is not None:
                    self.trainer.stop()
                self.runs.put(None)
                return
            if kind == "run":
                self.runs.put(rest)
                continue
            run_id, rest = rest[0], rest[1:]
            trainer = self.trainer if run_id == self.run_id else None
            if kind == "preview":
                self.preview(trainer, *rest)
            elif trainer is not None:
                control = getattr(trainer, kind, None)  # pause, resume, stop; skip_member (an ensemble's)
                if control is not None:
                    control()
            elif kind == "resume":
                self.early.discard((run_id, "pause"))
            else:
                self.early.add((run_id, kind))

    def preview(self, trainer: Any, request: int, region: tuple[slice, ...], halo: int) -> None:
        if trainer is None:
            self.send(("preview", request, None))
            return

        def forward() -> PreviewResult:  # on the training thread, between two steps
            result, self._model = predict_view(trainer, self.image, region, halo, self._model)
            return result

        def done(future: Future) -> None:
            try:
                self.send(("preview", request, future.result()))
            except (CancelledError, Exception):  # noqa: BLE001 -- a preview that fails is just not shown
                self.send(("preview", request, None))

        trainer.between_steps(forward).add_done_callback(done)

    def train(self, run_id: int, data: list, config: Any, init: Any, replay: list) -> None:
        from .ensemble import make_trainer

        self.run_id, self._model, self.image = run_id, None, data[0].image
        error: BaseException | None = None
        try:
            trainer = make_trainer(data, config, init=init, replay=replay)  # an ensemble's, or one network's
            self.trainer = trainer
            for kind in ("pause", "stop"):
                if (run_id, kind) in self.early:
                    getattr(trainer, kind)()
            if self.quitting:
                trainer.stop()
            self.early = {(r, k) for r, k in self.early if r > run_id}
            for event in trainer.run():
                self.send(("event", run_id, event))
            if trainer.step > 0 and trainer.collapsed is None and not trainer.kept_parent:
                self.send(("result", trainer.snapshot(), trainer.metadata()))
        except Exception as err:  # noqa: BLE001 -- handed to the parent, which shows it
            error = err
        finally:
            self.trainer, self.image, self._model = None, None, None
        if error is not None:
            try:
                pickle.loads(pickle.dumps(error))
            except Exception:  # noqa: BLE001 -- an error that does not pickle both ways goes as its one line
                error = RuntimeError(one_line(error, typed=True))
        self.send(("end", error))

    def serve(self) -> None:
        threading.Thread(target=self.read, name="napari-msd messages", daemon=True).start()
        from ..inference import predictor  # noqa: F401 -- imported while idle (torch: a second or two), so a
        from . import engine, ensemble  # noqa: F401 -- run sent later starts at once

        while (job := self.runs.get()) is not None:
            self.train(*job)


def main(argv: list[str] | None = None) -> None:
    """The child: ``python -m napari_msd.training.remote ADDRESS NICENESS``, the key on stdin."""
    address, niceness = (argv if argv is not None else sys.argv[1:])[:2]
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    if int(niceness) and hasattr(os, "nice"):
        try:
            os.nice(int(niceness))
        except OSError:
            pass
    conn = Client(address, authkey=authkey)
    try:
        _Child(conn).serve()
    finally:
        conn.close()


if __name__ == "__main__":  # run as a script, this file is ``__main__``: pickled records must name the module
    from . import remote  # python -m sets the package, so the relative import names the module

    remote.main()


__all__ = ["PreviewResult", "RemoteRun", "predict_view", "Result", "TrainingProcess", "TrainingProcessError"]
