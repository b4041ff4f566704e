"""Shared test settings and fixtures."""

from __future__ import annotations

import os

import pytest
import torch

from helpers.arrays import CountingArray

# Forwards without gradients in float32 in this process and in every process the tests start, whatever the CPU (see
# _float32_forwards); set before the test modules copy the environment for their subprocesses.
os.environ["NAPARI_MSD_PRECISION"] = "float32"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Keep torch on one thread: tests share two cores with other work, and oversubscribed threads make
    small forward passes many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _float32_forwards(monkeypatch):
    """Forwards without gradients in float32 on every machine (tests compare exact figures; a CPU with native
    bfloat16 would otherwise choose it): bfloat16 has tests of its own (models/test_precision.py)."""
    from napari_msd.models import precision

    monkeypatch.setenv("NAPARI_MSD_PRECISION", "float32")
    monkeypatch.setitem(precision._process, "precision", None)  # a test's set_inference_precision ends with it


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    """Pretrained bodies (training.pretrain) go to a cache of the test run, never to the user's."""
    monkeypatch.setenv("NAPARI_MSD_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def accept_any_network(monkeypatch):
    """Switch off the collapse verdict (:mod:`napari_msd.training.health`) and the class-prior correction's erasure
    guard (:func:`napari_msd.training.prior.erased_classes`) for tests of run mechanics (stop, save, files, events,
    command output) whose few steps are too few to learn anything; the guards have tests of their own."""
    from napari_msd.training import health, prior

    monkeypatch.setattr(health, "DOMINANT", 1.01)
    monkeypatch.setattr(prior, "ERASE_KEEP", 0.0)


@pytest.fixture(scope="session")
def counting_array():
    """The :class:`CountingArray` class."""
    return CountingArray
