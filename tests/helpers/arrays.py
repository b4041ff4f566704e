"""A lazy array stand-in that counts its reads, for tests that prove a volume is read in pieces."""

from __future__ import annotations

import threading

import numpy as np


class CountingArray:
    """A lazy array stand-in (like a zarr array) recording every read made through ``__getitem__``.

    It has no ``__array__``, so code that tries to read it whole with ``np.asarray`` gets an object array and
    fails loudly instead of silently reading everything. Without ``data`` it is synthetic: a value from the
    coordinates, never materialised whole (``shape`` and ``dtype`` given).
    """

    def __init__(self, data=None, chunks: tuple[int, ...] | None = None, *, shape=None, dtype=np.uint8):
        self._data = data
        self.shape = tuple(data.shape if data is not None else shape)
        self.dtype = np.dtype(data.dtype if data is not None else dtype)
        self.ndim = len(self.shape)
        if chunks is not None:
            self.chunks = chunks
        self.reads: list[int] = []  # elements returned by each read
        self.keys: list = []  # the index of each read
        self.lock = threading.Lock()

    def __getitem__(self, key):
        if self._data is not None:
            out = np.array(self._data[key], copy=True)
        else:
            grids = np.meshgrid(*[np.arange(n)[k] for n, k in zip(self.shape, key)], indexing="ij")
            out = (sum(grids) % 251).astype(self.dtype)
        with self.lock:
            self.reads.append(int(np.size(out)))
            self.keys.append(key)
        return out

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def elements_read(self) -> int:
        return sum(self.reads)
