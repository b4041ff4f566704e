"""bfloat16 in MS-D (models.precision): forwards without gradients close to float32; training products in bfloat16
only where a training holds them, with float32 gradients close to float32's; chosen as asked."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_msd.models import precision
from napari_msd.models.msd import MSDNet
from napari_msd.models.precision import (
    current_precision,
    describe_precision,
    held_products,
    inference_dtype,
    inference_precision,
    precision_name,
    set_inference_precision,
    training_dtype,
    training_products,
)

CPU = torch.device("cpu")


def _net(seed: int = 0, in_channels: int = 1, ndim: int = 2) -> MSDNet:
    torch.manual_seed(seed)
    net = MSDNet(in_channels, 3, depth=20, ndim=ndim)
    with torch.no_grad():  # a head that reads the maps (a new network's is zero: every class alike)
        net.head_weight.normal_(0.0, 0.5)
        net.head_bias.normal_(0.0, 0.1)
    return net.eval()


def _image(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand((1, 1, *shape[-2:]), generator=g), 5, 1, 2)
    return (smooth - smooth.mean()) / smooth.std()


def _forward(net: torch.nn.Module, x: torch.Tensor, chosen: str) -> torch.Tensor:
    with torch.no_grad(), inference_precision(chosen):
        return net(x)


def test_bfloat16_forward_is_close_to_float32_and_returns_float32():
    net, x = _net(), _image((96, 80))
    full, reduced = _forward(net, x, "float32"), _forward(net, x, "bfloat16")
    assert reduced.dtype == torch.float32 and reduced.shape == full.shape
    assert not torch.equal(full, reduced)  # it did compute in bfloat16
    p_full, p_reduced = torch.softmax(full, 1), torch.softmax(reduced, 1)
    assert float((p_full - p_reduced).abs().max()) < 0.05
    assert float((full.argmax(1) == reduced.argmax(1)).float().mean()) > 0.99


def test_bfloat16_forward_in_3d_and_with_extra_channels():
    net = _net(in_channels=2, ndim=3)
    x = torch.randn(1, 2, 12, 20, 24, generator=torch.Generator().manual_seed(3))
    full, reduced = _forward(net, x, "float32"), _forward(net, x, "bfloat16")
    assert float((torch.softmax(full, 1) - torch.softmax(reduced, 1)).abs().max()) < 0.05


def test_training_forwards_stay_float32_whatever_is_chosen():
    net, x = _net(), _image((48, 48))
    with inference_precision("float32"):
        loss_full = net(x).square().mean()
    with inference_precision("bfloat16"):
        loss_chosen = net(x).square().mean()
    assert torch.equal(loss_full, loss_chosen)  # with autograd on, the bfloat16 choice changes nothing
    loss_chosen.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_other_dtypes_are_left_as_they_are():
    net, x = _net().double(), _image((40, 40)).double()
    with torch.no_grad():
        full = net(x)
    assert torch.equal(_forward(net, x, "bfloat16"), full) and full.dtype == torch.float64


def test_the_choice_is_per_thread_inside_the_block_and_per_process_outside():
    set_inference_precision("bfloat16")
    seen = {}
    with inference_precision("float32"):
        worker = threading.Thread(target=lambda: seen.setdefault("other thread", current_precision()))
        worker.start()
        worker.join()
        seen["this thread"] = current_precision()
    seen["after"] = current_precision()
    assert seen == {"other thread": "bfloat16", "this thread": "float32", "after": "bfloat16"}


def test_the_environment_chooses_when_the_process_did_not(monkeypatch):
    monkeypatch.setenv("NAPARI_MSD_PRECISION", "bfloat16")
    assert current_precision() == "bfloat16" and inference_dtype(CPU) == torch.bfloat16
    monkeypatch.setenv("NAPARI_MSD_PRECISION", "")
    assert current_precision() == "auto"


def test_auto_follows_the_measured_speed_up_on_a_cpu_only(monkeypatch):
    set_inference_precision("auto")
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda: 3.0)
    assert inference_dtype(CPU) == torch.bfloat16 and precision_name(CPU) == "bfloat16"
    assert describe_precision(CPU) == "bfloat16 (products 3.0x faster in bfloat16 here)"
    assert inference_dtype(torch.device("cuda")) == torch.float32  # GPUs keep float32 unless chosen
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda: 1.1)
    assert inference_dtype(CPU) == torch.float32
    assert describe_precision(CPU) == "float32 (products 1.1x faster in bfloat16 here)"
    set_inference_precision("float32")
    assert describe_precision(CPU) == "float32 (chosen)"


def test_the_probe_measures_once_and_skips_cpus_without_native_bfloat16(monkeypatch):
    first = precision.bfloat16_speedup()
    assert first >= 0 and precision.bfloat16_speedup() == first
    assert (first == 0) == (precision.native_bfloat16() is False)
    precision._probe.cache_clear()
    try:
        monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
        assert precision.bfloat16_speedup() == 0.0
        set_inference_precision("auto")
        assert inference_dtype(CPU) == torch.float32
        assert describe_precision(CPU) == "float32 (no native bfloat16 here)"
    finally:
        precision._probe.cache_clear()


def test_the_output_bias_is_added_in_full_precision():
    net, x = _net(), _image((40, 40))
    before = _forward(net, x, "bfloat16")
    with torch.no_grad():
        net.head_bias += torch.tensor([0.01, -0.003, 0.0])  # finer than bfloat16 resolves next to logits of ~1-10
    after = _forward(net, x, "bfloat16")
    torch.testing.assert_close(after - before, torch.tensor([0.01, -0.003, 0.0]).view(1, 3, 1, 1).expand_as(after))


@pytest.mark.parametrize("bad", ["half", "fp16", "BF16"])
def test_an_unknown_precision_is_refused_in_one_line(bad, monkeypatch):
    with pytest.raises(ValueError, match=r"is not a precision; use one of auto, float32, bfloat16") as err:
        set_inference_precision(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="is not a precision"):
        with inference_precision(bad):
            pass
    monkeypatch.setenv("NAPARI_MSD_PRECISION", bad)
    with pytest.raises(ValueError, match="NAPARI_MSD_PRECISION"):
        current_precision()


def test_predictor_in_bfloat16_agrees_with_float32_on_labels():
    from napari_msd.inference.predictor import Predictor
    from napari_msd.io.model_file import ModelMetadata

    net = _net()
    meta = ModelMetadata(
        arch="msd", config=net.config(), class_names=["a", "b", "c"], receptive_field=net.receptive_field
    )
    planes = [_image((120, 100), seed).numpy()[0, 0] for seed in (1, 2)]
    image = np.clip(np.stack(planes) * 40 + 128, 0, 255).astype(np.uint8)
    predictor = Predictor(net, meta, device="cpu")
    with inference_precision("float32"):
        full = predictor.predict(image)
    with inference_precision("bfloat16"):
        reduced = predictor.predict(image)
    assert full.shape == reduced.shape == (3, *image.shape)  # class probabilities
    assert np.abs(full - reduced).mean() < 0.01
    assert np.mean(full.argmax(0) == reduced.argmax(0)) > 0.98


def _gradients(net: torch.nn.Module, x: torch.Tensor, products: torch.dtype) -> tuple[float, list[torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    target = torch.arange(x.shape[0] * x[0, 0].numel()).view(x.shape[0], *x.shape[2:]) % 3
    with training_products(products):
        loss = torch.nn.functional.cross_entropy(net(x), target)
        loss.backward()
    return float(loss), [p.grad.clone() for p in net.parameters()]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize(
    ("in_channels", "ndim", "width", "shape"),
    [(1, 2, 1, (4, 1, 40, 36)), (2, 3, 2, (2, 2, 10, 14, 12))],
    ids=["2d batch", "3d, 2 channels, width 2"],
)
def test_training_products_in_bfloat16_give_float32_gradients_close_to_float32(in_channels, ndim, width, shape):
    torch.manual_seed(0)
    net = MSDNet(in_channels, 3, depth=12, width=width, ndim=ndim)
    with torch.no_grad():
        net.head_weight.normal_(0.0, 0.5)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    loss_full, full = _gradients(net, x, torch.float32)
    loss_low, low = _gradients(net, x, torch.bfloat16)
    assert loss_low != loss_full and abs(loss_low - loss_full) < 0.01 * loss_full  # computed in bfloat16, close
    assert all(g.dtype == torch.float32 for g in low) and all(p.dtype == torch.float32 for p in net.parameters())
    assert _cosine(torch.cat([g.flatten() for g in full]), torch.cat([g.flatten() for g in low])) > 0.999
    assert min(_cosine(a, b) for a, b in zip(full, low)) > 0.97  # every parameter's gradient, not just the sum


def test_a_training_in_bfloat16_products_learns_as_one_in_float32():
    def train(products: torch.dtype) -> list[float]:
        torch.manual_seed(0)
        net = MSDNet(1, 2, depth=10)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        x = _image((48, 48), seed=5)
        target = (x[:, 0] > 0).long()  # a threshold of a smooth image: learnable by a few layers
        losses = []
        for _ in range(40):
            optimizer.zero_grad()
            with training_products(products):
                loss = torch.nn.functional.cross_entropy(net(x), target)
                loss.backward()
            optimizer.step()
            losses.append(float(loss))
        return losses

    full, low = train(torch.float32), train(torch.bfloat16)
    assert low != full
    assert low[-1] < 0.3 * low[0] and full[-1] < 0.3 * full[0]
    assert abs(low[-1] - full[-1]) < 0.1 * low[0]


def test_training_products_are_held_per_thread_and_only_for_training():
    seen = {}
    net, x = _net(), _image((40, 40))
    outside = _forward(net, x, "float32")
    assert held_products() is None
    with training_products(torch.bfloat16):
        worker = threading.Thread(target=lambda: seen.setdefault("other thread", held_products()))
        worker.start()
        worker.join()
        seen["this thread"] = held_products()
        inside = _forward(net, x, "float32")  # a forward without gradients follows the inference choice alone
    seen["after"] = held_products()
    assert seen == {"other thread": None, "this thread": torch.bfloat16, "after": None}
    assert torch.equal(inside, outside)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        with training_products(torch.float16):
            pass


def test_a_training_precision_is_chosen_as_asked_and_auto_follows_the_inference_choice(monkeypatch):
    assert training_dtype(CPU, "bfloat16") == torch.bfloat16 and training_dtype(CPU, "float32") == torch.float32
    set_inference_precision("auto")
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda: 3.0)
    assert training_dtype(CPU) == torch.bfloat16 and training_dtype(torch.device("cuda")) == torch.float32
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda: 1.1)
    assert training_dtype(CPU) == torch.float32
    set_inference_precision("bfloat16")  # NAPARI_MSD_PRECISION or --precision: one choice for both
    assert training_dtype(CPU, "auto") == torch.bfloat16 and training_dtype(CPU, "float32") == torch.float32
    with pytest.raises(ValueError, match="training precision 'half' is not a precision"):
        training_dtype(CPU, "half")
