"""Helpers for dock tests: a small synthetic EM-like volume with strokes, and waiting for a dock's worker."""

from __future__ import annotations

import os

import numpy as np

SHAPE = (4, 64, 64)
# Ceiling of every wait for background work, in ms. Waits end as soon as their condition holds, so a generous
# ceiling costs nothing on a fast machine and keeps a busy one (another test run, a benchmark) from failing a test
# that would pass given the time; NAPARI_MSD_TEST_WAIT_S overrides it.
WAIT_MS = int(1000 * float(os.environ.get("NAPARI_MSD_TEST_WAIT_S", 900)))


def synthetic_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A volume with dark background (class 1), bright squares (class 2) and a gray square nobody labeled,
    and strokes of both classes on slice 1."""
    rng = np.random.default_rng(seed)
    image = np.full(SHAPE, 0.2, np.float32)
    image[:, 10:25, 10:25] = 0.9
    image[:, 40:55, 40:55] = 0.62
    image += rng.normal(0, 0.03, SHAPE).astype(np.float32)
    strokes = np.zeros(SHAPE, np.uint8)
    strokes[1, 15:20, 12:23] = 2
    strokes[1, 30:33, 5:60] = 1
    strokes[2, 5:7, 30:60] = 1
    strokes[2, 12:22, 18:20] = 2
    return image, strokes


def wait_idle(qtbot, dock, timeout: int = WAIT_MS) -> None:
    """Wait until ``dock``'s worker has finished and its last signals were handled."""
    qtbot.waitUntil(lambda: dock.work is not None and not dock.work.running, timeout=timeout)
    qtbot.wait(50)
