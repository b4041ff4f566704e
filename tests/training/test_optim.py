"""The torch.optim-free Adam: the same trajectory as torch.optim.Adam, no compiler import, GradScaler-compatible."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from napari_msd.training.optim import Adam, scheduled_lr


def _trajectories(steps: int = 25):
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    ours = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    ours.load_state_dict(ref.state_dict())
    opt_ref = torch.optim.Adam(ref.parameters(), lr=3e-2)
    opt_ours = Adam(ours.parameters(), lr=3e-2)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    for _ in range(steps):
        for net, opt in ((ref, opt_ref), (ours, opt_ours)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return ref, ours


def test_matches_torch_adam():
    ref, ours = _trajectories()
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_and_gradless_parameters_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    opt = Adam([a, b, frozen], lr=0.1)
    (a * 2).sum().backward()
    opt.step()
    assert (a < 1).all() and torch.equal(b, torch.ones(3)) and torch.equal(frozen, torch.ones(3))
    opt.zero_grad()
    assert a.grad is None


def test_works_with_a_disabled_grad_scaler():
    p = torch.nn.Parameter(torch.ones(2))
    opt = Adam([p], lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    scaler.scale((p**2).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert (p < 1).all()


@pytest.mark.parametrize("kwargs", [{"lr": 0}, {"betas": (0.9, 1.0)}, {"eps": 0}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match="Adam needs"):
        Adam([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_training_never_imports_the_compiler_stack():
    """torch.optim imports torch._dynamo (and Triton with the CUDA wheels), which crashes a viewer on software GL."""
    code = (
        "import sys, numpy as np\n"
        "from napari_msd.training.engine import TrainConfig, Trainer\n"
        "from napari_msd.training.sampling import TrainingData\n"
        "img = np.random.default_rng(0).random((48, 48), dtype=np.float32)\n"
        "lab = np.zeros((48, 48), np.uint8); lab[5:9, 5:30] = 1; lab[30:34, 5:30] = 2\n"
        "t = Trainer([TrainingData(img, lab)], TrainConfig(steps=3, patch_size=32, batch_size=2, validate_every=2,"
        " model={'depth': 4}))\n"
        "list(t.run())\n"
        "print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_scheduled_learning_rates():
    assert scheduled_lr(1e-3, "constant", 0.9) == 1e-3
    assert [scheduled_lr(1.0, "linear", p) for p in (0.0, 0.25, 1.0, 1.5)] == [1.0, 0.75, 0.0, 0.0]
    assert scheduled_lr(1.0, "cosine", 0.5) == pytest.approx(0.5)
    assert scheduled_lr(1.0, "cosine", 1.0) == pytest.approx(0.0)
    assert scheduled_lr(1.0, "linear", None) == 1.0  # open-ended training: nothing to decay towards
    assert scheduled_lr(1.0, "linear", 0.5, step=0, warmup=4) == pytest.approx(0.125)  # ramp times decay
    with pytest.raises(ValueError, match="schedule 'step'"):
        scheduled_lr(1.0, "step", 0.5)
