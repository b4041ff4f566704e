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


SHIFTS = [((9, 7), 2), ((4, 3), 3), ((6, 5, 7), 2), ((2, 5, 3), 3)]  # the framed pad is 3: wider than 2


@pytest.mark.parametrize(("spatial", "dilation"), SHIFTS)
def test_both_layouts_sum_the_same_shifted_taps(spatial, dilation):
    from napari_msd.models.msd_kernel import Scratch

    torch.manual_seed(0)
    taps = torch.randn(3 ** len(spatial), 2, *spatial, dtype=torch.float64)  # (taps, N, *spatial)
    padded, framed = PaddedTaps(spatial, {dilation, 3}, taps.device), Framed(spatial, {dilation, 3}, taps.device)
    stored = torch.zeros((*taps.shape[:2], *framed.stored), dtype=torch.float64)
    framed.inside(stored).copy_(taps)
    framed.made(stored)
    out_padded, out_framed = (torch.empty(2, *spatial, dtype=torch.float64) for _ in range(2))
    padded.shift_sum(taps, dilation, out_padded, Scratch(taps))
    framed.shift_sum(stored, dilation, out_framed, Scratch(taps))
    torch.testing.assert_close(out_framed, out_padded)
    expected = sum(  # tap k of the 3**ndim, read at its kernel offset from the reflect-padded map
        reflect_pad(taps[k : k + 1], dilation, len(spatial))[(0, slice(None)) + window]
        for k, window in enumerate(Frame(spatial, dilation, taps.device).windows(dilation))
    )
    torch.testing.assert_close(out_padded, expected)


@pytest.mark.parametrize("kind", [PaddedTaps, Framed])
@pytest.mark.parametrize(("spatial", "dilation"), SHIFTS)
def test_the_shifted_sums_adjoint_satisfies_the_inner_product_identity(kind, spatial, dilation):
    from napari_msd.models.msd_kernel import Scratch

    torch.manual_seed(1)
    layout = kind(spatial, {dilation, 3}, torch.device("cpu"))
    taps = torch.randn(3 ** len(spatial), 2, *layout.stored, dtype=torch.float64)
    g = torch.randn(2, *spatial, dtype=torch.float64)
    out = torch.empty(2, *spatial, dtype=torch.float64)
    layout.shift_sum(taps, dilation, out, Scratch(taps))
    adjoint = torch.full_like(taps, float("nan"))  # every element must be written
    layout.shift_sum_adjoint(g, dilation, adjoint, Scratch(taps))
    assert torch.allclose((out * g).sum(), (taps * adjoint).sum(), rtol=1e-12)


def test_the_batch_is_arranged_by_the_products_dtype():
    from napari_msd.models.msd_kernel import MapsFirst, SampleMajor, storage_for

    assert type(storage_for(4, (8, 8), torch.float32)) is SampleMajor  # MKL's float32 products: per sample
    assert type(storage_for(4, (8, 8), torch.float64)) is SampleMajor
    assert type(storage_for(4, (8, 8), torch.bfloat16)) is MapsFirst  # oneDNN's bfloat16: one product for all
    for kind in (SampleMajor, MapsFirst):  # both hand the layouts (maps, N, *stored) views of the same values
        store = kind(3, (4, 5))
        t = store.empty(torch.empty(0), 6, torch.float64)
        maps = store.maps(t)
        assert maps.shape == (6, 3, 4, 5)
        maps.copy_(torch.arange(360, dtype=torch.float64).view(6, 3, 4, 5))
        assert torch.equal(store.maps(store.flat(t)), maps)
        assert torch.equal(store.maps(store.rows(store.flat(t), 2, 4)), maps[2:4])
