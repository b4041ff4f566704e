"""Adam without ``torch.optim``: the same update, minus the import of torch's compiler stack; and the learning-rate
schedules over a training's budget (:func:`scheduled_lr`).

``torch.optim.Optimizer`` methods are wrapped in ``torch._disable_dynamo``, whose first call imports
``torch._dynamo`` and, with the CUDA wheels, Triton's LLVM. Loaded into a napari process that already
runs Mesa's software OpenGL (llvmpipe: VMs, remote desktops, shared servers), that LLVM crashes the
process. Training inside the viewer therefore never touches ``torch.optim``; this class reproduces
``torch.optim.Adam`` (no weight decay, no AMSGrad) and exposes ``param_groups`` so that
``torch.amp.GradScaler`` can unscale its gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypedDict

import torch

LR_SCHEDULES = ("constant", "linear", "cosine")


def check_lr_schedule(schedule: str) -> None:
    """Raise a one-line ValueError unless ``schedule`` is one of :data:`LR_SCHEDULES`."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def scheduled_lr(base: float, schedule: str, progress: float | None, step: int = 0, warmup: int = 0) -> float:
    """The learning rate of step ``step`` (0-based): ``base``, ramped up over ``warmup`` steps, decayed by ``schedule``.

    ``progress`` is the share of the training's budget (steps or time limit) used so far; ``None`` (open-ended
    training) means no decay. ``linear`` falls to 0 at the end of the budget and ``cosine`` follows half a cosine
    down to 0: training to a known budget ends on small steps (Li, Yumer & Ramanan, ICLR 2020).
    """
    check_lr_schedule(schedule)
    lr = base * (min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
    if progress is None or schedule == "constant":
        return lr
    p = min(1.0, max(0.0, progress))
    return lr * ((1.0 - p) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p)))


class ParamGroup(TypedDict):
    """The one parameter group, keyed as ``torch.optim`` keys it (``torch.amp.GradScaler`` reads ``params``)."""

    params: list[torch.nn.Parameter]
    lr: float
    betas: tuple[float, float]
    eps: float


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, as ``torch.optim.Adam`` computes it."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("Adam got no trainable parameters")
        if lr <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam needs lr > 0, eps > 0 and betas in [0, 1), got lr={lr}, betas={betas}, eps={eps}")
        self.param_groups: list[ParamGroup] = [{"params": params, "lr": lr, "betas": betas, "eps": eps}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self.steps = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        pairs = [(p, p.grad) for p in group["params"] if p.grad is not None]
        if not pairs:
            return
        self.steps += 1
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        for p, _ in pairs:
            if p not in self.state:
                self.state[p] = {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}
        params: list[torch.Tensor] = [p for p, _ in pairs]
        grads = [g for _, g in pairs]
        m = [self.state[p]["m"] for p in params]
        v = [self.state[p]["v"] for p in params]
        torch._foreach_lerp_(m, grads, 1 - beta1)  # m = beta1 m + (1 - beta1) g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        bias1 = 1 - beta1**self.steps
        bias2 = 1 - beta2**self.steps
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, value=-lr / bias1)


__all__ = ["Adam"]
