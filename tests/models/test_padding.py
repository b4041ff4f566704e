"""Repeated-reflection padding and its adjoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_msd.models.padding import reflect_index, reflect_pad, reflect_pad_adjoint


@pytest.mark.parametrize(
    ("ndim", "shape", "pad"), [(2, (2, 3, 9, 7), 4), (3, (1, 2, 5, 6, 7), 3), (2, (1, 1, 2, 2), 1)]
)
def test_equals_torch_reflect_where_torch_is_defined(ndim, shape, pad):
    x = torch.randn(shape)
    expected = F.pad(x, (pad,) * (2 * ndim), mode="reflect")
    assert torch.equal(reflect_pad(x, pad, ndim), expected)
    out = torch.full(expected.shape, float("nan"))
    assert torch.equal(reflect_pad(x, pad, ndim, out=out), expected)


def test_keeps_reflecting_when_the_pad_exceeds_the_axis():
    assert reflect_index(3, 5).tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]
    assert reflect_index(1, 3).tolist() == [0] * 7
    x = torch.tensor([[[10.0, 20.0, 30.0]]])
    assert reflect_pad(x, 4, 1).flatten().tolist() == [10, 20, 30, 20, 10, 20, 30, 20, 10, 20, 30]


def test_empty_axis_is_refused():
    with pytest.raises(ValueError, match="empty axis"):
        reflect_index(0, 2)


@pytest.mark.parametrize(
    ("ndim", "shape", "pad"),
    [(2, (2, 3, 9, 7), 4), (2, (1, 2, 3, 1), 5), (3, (1, 2, 4, 5, 3), 2), (3, (1, 1, 2, 1, 3), 4)],
)
def test_adjoint_satisfies_the_inner_product_identity(ndim, shape, pad):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    padded = reflect_pad(x, pad, ndim)
    y = torch.randn(padded.shape, dtype=torch.float64)
    lhs = (padded * y).sum()
    rhs = (x * reflect_pad_adjoint(y, pad, ndim)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    out = torch.full(shape, 7.0, dtype=torch.float64)
    assert torch.allclose(reflect_pad_adjoint(y, pad, ndim, out=out), reflect_pad_adjoint(y, pad, ndim))
