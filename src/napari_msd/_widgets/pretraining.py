"""Learning the image while a person paints: the Train dock's background self-supervised pretraining.

As soon as an image is chosen, the session's network is pretrained on it (:mod:`napari_msd.training.pretrain`) in a
low-priority worker, for at most :data:`BUDGET_MINUTES` per image and network. The body is cached on disk per image
and network (``training.pretrain.cache_path``) every :data:`SAVE_EVERY` seconds and whenever it pauses or stops, so
a later session, or a training started now, picks it up. It pauses while a training runs (two torch thread teams on
the same cores would slow both) and continues afterwards until its budget is spent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from napari_msd.training.pretrain import (
    PretrainConfig,
    Pretrainer,
    PretrainError,
    PretrainStep,
    cache_key,
    cache_path,
    load_pretrained,
    save_pretrained,
)

from . import workers

BUDGET_MINUTES = 10.0  # of pretraining per image and network; more brings little on a CPU
SAVE_EVERY = 60.0  # seconds between cache writes while it runs


class BackgroundPretraining:
    """One pretraining at a time, for the image and network last :meth:`start`-ed; ``on_status`` gets one line of
    plain text whenever its state changes (main thread)."""

    def __init__(self, session: Any, on_status: Callable[[str], None], budget_minutes: float = BUDGET_MINUTES):
        self.session, self.on_status, self.budget = session, on_status, 60.0 * budget_minutes
        self.work: workers.Work | None = None
        self.pretrainer: Pretrainer | None = None
        self.key: str | None = None
        self.image_name = ""
        self.state = "off"
        self._held = 0  # pause() calls not yet resumed
        self._save_lock = threading.Lock()

    # -- from the dock (main thread) ----------------------------------------------------------
    def start(self, image: Any, name: str) -> None:
        """Pretrain the session's network on ``image`` (a layer's array), unless that is under way or done."""
        s = self.session
        config = PretrainConfig(arch=s.arch, model=self._model(), input=s.input_spec)
        try:
            config.input.check_image(len(image.shape))
            key = cache_key(image, config.arch, config.model_config(), config.input)
        except ValueError as err:
            self._set("off", f"Not learning the image: {err}")
            return
        if key == self.key and self.running:
            return
        self.stop()
        self.key, self.image_name = key, name
        self.work = workers.start(
            lambda work: self._events(work, image, config, key), self._on_event, self._on_done, "Learning the image"
        )
        self.work.on_cancel.append(lambda: self.pretrainer is not None and self.pretrainer.stop())
        self._set("starting", f"Learning '{name}' (self-supervised)…")

    def stop(self) -> None:
        """End the running pretraining (its body is cached first); returns when it has ended."""
        if self.work is not None and self.work.running:
            self.work.cancel()
            self.work.wait(30.0)
        self.work, self.pretrainer = None, None

    def pause(self) -> None:
        """Hold the pretraining (nestable); :meth:`resume` lets it go on."""
        self._held += 1
        if self.pretrainer is not None:
            self.pretrainer.pause()
            if self.running:
                self._set("paused", f"Learning '{self.image_name}': paused while training runs")

    def resume(self) -> None:
        self._held = max(0, self._held - 1)
        if self._held == 0 and self.pretrainer is not None:
            self.pretrainer.resume()

    @property
    def running(self) -> bool:
        return self.work is not None and self.work.running

    # -- from the training worker (any thread) ------------------------------------------------
    def weights_for(self, image: Any, arch: str, model_config: dict, spec: Any) -> str | None:
        """The cached body for this image and network (saved from the running pretraining first), or None."""
        try:
            key = cache_key(image, arch, model_config, spec)
        except ValueError:
            return None
        trainer = self.pretrainer
        if trainer is not None and key == self.key and trainer.step > 0:
            self._save(trainer)
        path = cache_path(key)
        if not path.is_file():
            return None
        try:
            load_pretrained(path)
        except PretrainError:
            return None  # a damaged cache entry is ignored (a new pretraining replaces it)
        return str(path)

    # -- internals ------------------------------------------------------------------------------
    def _model(self) -> dict:
        return {k: v for k, v in self.session.model_config.items() if k not in ("in_channels", "out_channels", "ndim")}

    def _save(self, trainer: Pretrainer) -> None:
        with self._save_lock:
            path = cache_path(trainer.image_key or "")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_pretrained(path, trainer.body())

    def _events(self, work: workers.Work, image: Any, config: PretrainConfig, key: str):
        path = cache_path(key)
        start = None
        if path.is_file():
            try:
                start = load_pretrained(path)
            except PretrainError:
                start = None
        done = start.seconds if start is not None else 0.0
        if done >= self.budget:
            yield ("done", start.steps, start.seconds)
            return
        config.time_limit = self.budget - done
        trainer = Pretrainer([image], config, start=start, image_key=key)
        if self._held:
            trainer.pause()
        self.pretrainer = trainer
        saved = time.perf_counter()
        try:
            for event in trainer.run():
                if work.cancelled.is_set():
                    break
                yield event
                if time.perf_counter() - saved > SAVE_EVERY:
                    self._save(trainer)
                    saved = time.perf_counter()
        finally:
            if trainer.step > (start.steps if start is not None else 0):
                self._save(trainer)
        if not work.cancelled.is_set():
            yield ("done", trainer.step, trainer.seconds)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, PretrainStep):
            if self.pretrainer is not None and self.pretrainer.paused:
                return
            if event.step % 10 == 0 or self.state != "running":
                self._set(
                    "running",
                    f"Learning '{self.image_name}' (self-supervised): {event.step} steps, "
                    f"{_minutes(self.pretrainer.seconds if self.pretrainer else event.elapsed)}; a new "
                    "training starts from it",
                )
        elif isinstance(event, tuple) and event[0] == "done":
            self._set(
                "done",
                f"Learned '{self.image_name}' (self-supervised): {event[1]} steps, "
                f"{_minutes(event[2])}; new trainings start from it",
            )

    def _on_done(self, work: workers.Work) -> None:
        if self.work is work:
            self.pretrainer = None
            if self.state not in ("done", "off"):
                self._set("stopped", f"Stopped learning '{self.image_name}'")

    def _set(self, state: str, text: str) -> None:
        self.state = state
        self.on_status(text)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
