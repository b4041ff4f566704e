"""Shared test settings and fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Keep torch on one thread: tests share two cores with other work, and oversubscribed threads make
    small forward passes many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    """Pretrained bodies (training.pretrain) go to a cache of the test run, never to the user's."""
    monkeypatch.setenv("NAPARI_MSD_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def accept_any_network(monkeypatch):
    """Switch off the collapse verdict (:mod:`napari_msd.training.health`) for tests of run mechanics (stop,
    save, files, events, command output) whose few steps are too few to learn anything; the guard has tests of
    its own."""
    from napari_msd.training import health

    monkeypatch.setattr(health, "DOMINANT", 1.01)


class CountingArray:
    """A lazy array stand-in (like a zarr array): records every read made through ``__getitem__``.

    It has no ``__array__``, so code that tries to read it whole with ``np.asarray`` gets an
    object array and fails loudly instead of silently reading everything.
    """

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...] | None = None):
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        if chunks is not None:
            self.chunks = chunks
        self.reads: list[int] = []  # elements returned by each read

    def __getitem__(self, key):
        out = self._data[key]
        self.reads.append(int(np.size(out)))
        return np.array(out, copy=True)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def elements_read(self) -> int:
        return sum(self.reads)


@pytest.fixture(scope="session")
def counting_array():
    """The :class:`CountingArray` class."""
    return CountingArray
