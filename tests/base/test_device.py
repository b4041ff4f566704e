"""Device choice: auto falls back to the CPU; impossible requests are one clear line, not a crash later."""

from __future__ import annotations

import pytest
import torch

from napari_msd.base.device import cpu_threads, describe_device, select_device

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


@pytest.mark.parametrize("name", ["cpu", "CPU", "Cpu"])
def test_cpu_is_always_available(name):
    assert select_device(name) == torch.device("cpu")


@pytest.mark.parametrize("name", ["auto", "AUTO", "", None])
def test_auto_prefers_cuda_then_mps_then_cpu(name):
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert select_device(name).type == expected


def test_default_is_auto():
    assert select_device() == select_device("auto")


@pytest.mark.parametrize("name", ["gpu", "banana", "cuda:abc", "cuda:-1", "cpu cpu"])
def test_unknown_strings_are_refused_with_one_line(name):
    with pytest.raises(ValueError) as err:
        select_device(name)
    text = _one_line(err)
    assert "cpu" in text  # says what would work


@pytest.mark.parametrize("name", ["xpu", "meta", "hpu", "xla"])
def test_devices_napari_msd_cannot_train_on_are_refused_with_one_line(name):
    # torch parses these names, but training on them fails later with an obscure error
    # ("unsupported scalarType" for meta, an AssertionError for xpu): refuse them up front.
    with pytest.raises(ValueError) as err:
        select_device(name)
    assert "cpu" in _one_line(err)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["cuda", "CUDA", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_with_one_line(name):
    with pytest.raises(ValueError) as err:
        select_device(name)
    text = _one_line(err)
    assert "CUDA" in text and "cpu" in text


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_gpus_is_refused():
    with pytest.raises(ValueError) as err:
        select_device(f"cuda:{torch.cuda.device_count()}")
    _one_line(err)
    assert select_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.skipif(HAS_MPS, reason="this machine has Apple MPS")
def test_mps_without_apple_gpu_is_refused_with_one_line():
    with pytest.raises(ValueError) as err:
        select_device("mps")
    assert "MPS" in _one_line(err)


def test_cpu_threads_and_description():
    n = cpu_threads()
    assert isinstance(n, int) and n >= 1
    text = describe_device(torch.device("cpu"))
    assert text.startswith("CPU") and str(torch.get_num_threads()) in text


def test_available_devices_lists_what_torch_reports(monkeypatch):
    from napari_msd.base.device import available_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_devices()[:2] == ["auto", "cpu"] and "cuda" not in available_devices()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [d for d in available_devices() if d.startswith("cuda")] == ["cuda", "cuda:0", "cuda:1"]
