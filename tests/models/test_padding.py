"""Repeated-reflection padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_msd.models.padding import reflect_index, reflect_pad


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
