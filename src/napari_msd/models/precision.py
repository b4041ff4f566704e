"""The precision of MS-D's arithmetic: bfloat16 where this CPU multiplies it natively faster than float32.

MS-D's forward is a chain of skinny matrix products (a few tap rows by every pixel of the tile) and shifted sums.
On CPUs with native bfloat16 dot products (AVX-512 BF16, AMX) oneDNN runs those products several times faster than
MKL's float32, and the maps take half the bytes.

- Forwards without autograd (prediction, live previews, validation, the prior correction's estimate, a retraining's
  parent as teacher) compute in :func:`inference_dtype`: under ``"auto"`` bfloat16 only on a CPU that reports native
  bfloat16 and where a short probe of such a product measured it at least ``MIN_SPEEDUP`` times faster (once per
  process). The logits come back in float32, the output bias added in float32.
- Training steps are float32 unless a training holds another dtype for its products (``with
  training_products(dtype):``, chosen by :func:`training_dtype` from ``TrainConfig.precision``): the matrix products
  and the stored maps then take bfloat16, while the gradient buffer, the parameters and their gradients stay float32.

``set_inference_precision(...)`` (or the environment variable ``NAPARI_MSD_PRECISION``) chooses ``"auto"``,
``"float32"`` or ``"bfloat16"`` for the process; ``with inference_precision("float32"):`` holds the calling thread
to one of them (the effective-halo measurement compares predictions and keeps float32). A training's ``"auto"``
follows that choice.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PRECISIONS = ("auto", "float32", "bfloat16")
MIN_SPEEDUP = 1.5  # "auto" takes bfloat16 from this measured speed-up of the probe's product on
PROBE_SHAPE = (36, 64, 65536)  # rows x inner x pixels: 4 MS-D layers' taps over 64 maps of a 256^2 tile

# set_inference_precision's choice; None: the environment's, else "auto"
_process: dict[str, str | None] = {"precision": None}
_thread = threading.local()


def _checked(precision: str, where: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{where} {precision!r} is not a precision; use one of {', '.join(PRECISIONS)}")
    return precision


def set_inference_precision(precision: str) -> None:
    """Choose the precision of forwards without gradients for this process (``PRECISIONS``)."""
    _process["precision"] = _checked(precision, "inference precision")


def current_precision() -> str:
    """The calling thread's choice, else the process's, else ``NAPARI_MSD_PRECISION``, else ``"auto"``."""
    held = getattr(_thread, "precision", None)
    if held is not None:
        return held
    chosen = _process["precision"]
    if chosen is not None:
        return chosen
    return _checked(os.environ.get("NAPARI_MSD_PRECISION", "auto") or "auto", "NAPARI_MSD_PRECISION")


@contextmanager
def inference_precision(precision: str) -> Iterator[None]:
    """Hold the calling thread to ``precision`` inside the block."""
    _checked(precision, "inference precision")
    before = getattr(_thread, "precision", None)
    _thread.precision = precision
    try:
        yield
    finally:
        _thread.precision = before


_probe_lock = threading.Lock()


def native_bfloat16() -> bool | None:
    """Whether this CPU has native bfloat16 dot products (AVX-512 BF16 or AMX); None where torch cannot tell."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is None for check in checks):
        return None
    return any(bool(check()) for check in checks)  # type: ignore[misc]


def bfloat16_speedup() -> float:
    """How many times faster a bfloat16 product of ``PROBE_SHAPE`` runs than in float32 on this CPU (0 without native
    bfloat16: emulated products are slow, and not probed); best of 5 each, measured once per process (about 0.1 s)."""
    with _probe_lock:
        return _probe()


@functools.cache
def _probe() -> float:
    if native_bfloat16() is False:
        return 0.0
    rows, inner, pixels = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(rows, inner, generator=generator).to(dtype)
        b = torch.randn(inner, pixels, generator=generator).to(dtype)
        out = torch.empty(rows, pixels, dtype=dtype)
        torch.mm(a, b, out=out)  # warm: oneDNN builds its kernel on the first call
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return seconds[0] / max(seconds[1], 1e-9)


def inference_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a forward without gradients on ``device``: float32, or bfloat16 where chosen or, under
    ``"auto"``, on a CPU where the probe measured it at least ``MIN_SPEEDUP`` times faster."""
    precision = current_precision()
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float32" or device.type != "cpu":
        return torch.float32
    return torch.bfloat16 if bfloat16_speedup() >= MIN_SPEEDUP else torch.float32


def precision_name(device: torch.device) -> str:
    """``"bfloat16"`` or ``"float32"``: what a forward without gradients on ``device`` computes in now."""
    return "bfloat16" if inference_dtype(device) == torch.bfloat16 else "float32"


def describe_precision(device: torch.device) -> str:
    """One line for logs and docks, e.g. ``"bfloat16 (products 3.9x faster in bfloat16 here)"``."""
    precision, name = current_precision(), precision_name(device)
    if precision != "auto" or device.type != "cpu":
        return f"{name} (chosen)" if precision != "auto" else name
    speedup = bfloat16_speedup()
    if speedup == 0:
        return f"{name} (no native bfloat16 here)"
    return f"{name} (products {speedup:.1f}x faster in bfloat16 here)"


def training_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype of MS-D's products in training steps on ``device``: ``precision`` if it names one, else (``"auto"``)
    what a forward without gradients computes in here (:func:`inference_dtype`: the thread's, the process's or
    ``NAPARI_MSD_PRECISION``'s choice, or bfloat16 on a CPU where it is measured faster)."""
    _checked(precision, "training precision")
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float32":
        return torch.float32
    return inference_dtype(device)


def held_products() -> torch.dtype | None:
    """The dtype the calling thread's training holds for MS-D's products (:func:`training_products`), else None."""
    return getattr(_thread, "products", None)


@contextmanager
def training_products(dtype: torch.dtype) -> Iterator[None]:
    """Run the calling thread's MS-D training steps with products in ``dtype`` (float32 or bfloat16) inside the
    block; parameters, gradients and the gradient buffer stay float32."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"MS-D's products run in float32 or bfloat16, not {dtype}")
    before = held_products()
    _thread.products = dtype
    try:
        yield
    finally:
        _thread.products = before
