"""Where training runs: CUDA, then Apple MPS, then the CPU, unless the user says otherwise."""

from __future__ import annotations

import os

import torch


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; ``cpu``, ``cuda``, ``cuda:1`` or ``mps`` force one."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"there is no GPU {device.index}; this machine has {torch.cuda.device_count()}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("Apple MPS was requested but is not available; use --device cpu or auto")
    return device


def cpu_threads() -> int:
    """Cores this process may use (respecting CPU affinity and cgroup-style limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def describe_device(device: torch.device) -> str:
    """A plain description for people: which GPU, or the CPU and its threads."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"CUDA GPU {index}: {torch.cuda.get_device_name(index)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU, {torch.get_num_threads()} threads"


def available_devices() -> list[str]:
    """``auto``, ``cpu`` and the GPUs torch reports (``cuda``, ``cuda:N`` with several, ``mps``)."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices += ["cuda"] + ([f"cuda:{i}" for i in range(count)] if count > 1 else [])
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices
