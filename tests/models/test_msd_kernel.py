"""The MS-D kernel's pieces: the reflective frame, its adjoint, and the choice of buffer layout."""

from __future__ import annotations

import pytest
import torch

from napari_msd.models.msd_kernel import Frame, Framed, PaddedTaps, layout_for
from napari_msd.models.padding import reflect_pad

CASES = [
    (2, (2, 3, 9, 7), 4),  # one mirror per axis (the fast path)
    (2, (1, 2, 3, 1), 5),  # axes shorter than the frame: repeated reflection
    (2, (1, 1, 12, 3), 3),  # one axis of each kind
    (3, (1, 2, 6, 5, 7), 2),
    (3, (1, 1, 2, 1, 3), 4),
]


@pytest.mark.parametrize(("ndim", "shape", "pad"), CASES)
def test_a_filled_frame_is_the_reflect_padding(ndim, shape, pad):
    x = torch.randn(shape, dtype=torch.float64)
    frame = Frame(tuple(shape[2:]), pad, x.device)
    framed = torch.full((*shape[:2], *frame.framed), float("nan"), dtype=torch.float64)
    frame.inside(framed).copy_(x)
    frame.fill(framed)
    torch.testing.assert_close(framed, reflect_pad(x, pad, ndim), rtol=0, atol=0)


@pytest.mark.parametrize(("ndim", "shape", "pad"), CASES)
def test_fold_is_the_adjoint_of_fill(ndim, shape, pad):
    torch.manual_seed(0)
    frame = Frame(tuple(shape[2:]), pad, torch.device("cpu"))
    x = torch.randn(shape, dtype=torch.float64)
    framed = torch.zeros((*shape[:2], *frame.framed), dtype=torch.float64)
    frame.inside(framed).copy_(x)
    frame.fill(framed)
    g = torch.randn(framed.shape, dtype=torch.float64)
    lhs = (framed * g).sum()
    frame.fold(g)
    rhs = (x * frame.inside(g)).sum()  # <fill(x), g> == <x, fold(g)>: the fold's frame is spent, the interior holds it
    assert torch.allclose(lhs, rhs, rtol=1e-12)


def test_windows_shift_the_framed_map_by_each_tap_offset():
    frame = Frame((5, 6), 3, torch.device("cpu"))
    windows = frame.windows(2)
    assert len(windows) == 9
    assert windows[0] == (slice(1, 6), slice(1, 7))  # offset (-1, -1) at dilation 2
    assert windows[4] == (slice(3, 8), slice(3, 9))  # the centre: the interior itself
    assert windows[8] == (slice(5, 10), slice(5, 11))


@pytest.mark.parametrize(
    ("spatial", "kind"),
    [
        ((512, 512), Framed),
        ((256, 256), Framed),
        ((64, 64), PaddedTaps),
        ((64, 64, 64), PaddedTaps),
        ((3, 3), PaddedTaps),
    ],
)
def test_the_framed_layout_serves_inputs_its_frame_barely_grows(spatial, kind):
    schedule = [[d] for d in range(1, 11)]  # the paper's dilations: a frame of 10 pixels
    assert isinstance(layout_for(spatial, schedule, torch.device("cpu")), kind)
