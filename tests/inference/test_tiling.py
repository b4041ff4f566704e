"""Block planning: exact cover, halos clipped at the image border, U-Net alignment, nearest-first order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_msd.inference.tiling import Block, make_block, normalize_region, order_blocks, plan_blocks


def _cover(shape, blocks) -> np.ndarray:
    count = np.zeros(shape, np.int32)
    for b in blocks:
        count[b.out] += 1
    return count


@pytest.mark.parametrize(
    ("shape", "block_shape", "halo", "align"),
    [
        ((100, 90), (32, 25), 7, 1),
        ((100, 90), (40, 36), 23, (4, 4)),
        ((6, 70, 60), (2, 32, 25), (0, 12, 12), 1),
        ((6, 70, 60), (4, 32, 25), 12, (2, 8, 8)),
        ((5, 7), 100, 3, 1),
    ],
)
def test_blocks_cover_the_image_once_and_inputs_hold_outputs_with_their_halo(shape, block_shape, halo, align):
    blocks = plan_blocks(shape, block_shape, halo, align)
    ndim = len(shape)
    bs = (block_shape,) * ndim if isinstance(block_shape, int) else block_shape
    halo = (halo,) * ndim if isinstance(halo, int) else halo
    align = (align,) * ndim if isinstance(align, int) else align
    assert (_cover(shape, blocks) == 1).all()
    assert len(blocks) == math.prod(math.ceil(n / b) for n, b in zip(shape, bs))
    assert len({b.index for b in blocks}) == len(blocks)
    for b in blocks:
        for o, i, c, n, h, a, size in zip(b.out, b.inp, b.crop, shape, halo, align, bs):
            assert o.start % size == 0  # outputs lie on the grid: they match output chunks
            assert 0 <= i.start <= o.start < o.stop <= i.stop <= n
            assert i.start % a == 0
            assert i.start <= max(o.start - h, 0)  # at least the halo before, unless clipped at 0
            assert i.stop == min(o.stop + h, n)  # the halo after, clipped at the image's end
            assert (c.start, c.stop) == (o.start - i.start, o.stop - i.start)
        assert b.shape == tuple(o.stop - o.start for o in b.out)


def test_inputs_are_clipped_at_the_true_border_only():
    blocks = plan_blocks((100, 90), (32, 25), 10)
    first, last = blocks[0], blocks[-1]
    assert first.inp == (slice(0, 42), slice(0, 35)) and first.crop == (slice(0, 32), slice(0, 25))
    assert last.out == (slice(96, 100), slice(75, 90)) and last.inp == (slice(86, 100), slice(65, 90))
    inner = next(b for b in blocks if b.index == (1, 1))
    assert inner.inp == (slice(22, 74), slice(15, 60)) and inner.inp_shape == (52, 45)


def test_alignment_rounds_the_input_start_down():
    block = make_block((100, 90), (slice(40, 80), slice(36, 72)), halo=23, align=4)
    assert block.inp == (slice(16, 100), slice(12, 90))
    assert block.crop == (slice(24, 64), slice(24, 60))
    assert make_block((100, 90), (slice(0, 10), slice(0, 10)), 23, 16).inp[0].start == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="entries"):
        plan_blocks((10, 10), (5, 5, 5), 0)
    with pytest.raises(ValueError, match="positive"):
        plan_blocks((10, 10), 0, 0)
    with pytest.raises(ValueError, match="halo"):
        plan_blocks((10, 10), 5, -1)
    with pytest.raises(ValueError, match="outside"):
        make_block((10, 10), (slice(5, 12), slice(0, 3)))


def test_order_blocks_puts_the_requested_region_first_then_nearest():
    blocks = plan_blocks((6, 70, 60), (1, 32, 25), (0, 5, 5))
    assert order_blocks(blocks) == blocks
    ordered = order_blocks(blocks, first=(3, slice(40, 50), slice(30, 40)))
    assert sorted(b.index for b in ordered) == sorted(b.index for b in blocks)
    hits = [b for b in blocks if b.index[0] == 3 and b.index[1] == 1 and b.index[2] == 1]
    assert ordered[: len(hits)] == hits
    region = normalize_region((3, slice(40, 50), slice(30, 40)), (6, 70, 60))

    def dist(b: Block) -> float:
        gaps = [max(0, r.start - o.stop + 1, o.start - r.stop + 1) for o, r in zip(b.out, region)]
        return math.hypot(*gaps)

    distances = [dist(b) for b in ordered]
    assert distances == sorted(distances) and distances[0] == 0 and distances[-1] > 0
    # a whole slice: every block of that slice first, then its neighbours
    by_slice = order_blocks(blocks, first=(5,))
    per_slice = len(blocks) // 6
    assert {b.index[0] for b in by_slice[:per_slice]} == {5}
    assert {b.index[0] for b in by_slice[per_slice : 2 * per_slice]} == {4}


def test_normalize_region_fills_and_clips():
    assert normalize_region((2,), (6, 70, 60)) == (slice(2, 3), slice(0, 70), slice(0, 60))
    assert normalize_region((-1, slice(None, 500)), (6, 70)) == (slice(5, 6), slice(0, 70))
