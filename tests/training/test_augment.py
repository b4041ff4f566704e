"""Augmentation: labels follow the image exactly; nothing invents label values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msd.training.augment import Augmentation
from napari_msd.training.sampling import IGNORE


def _batch(shape=(8, 24, 24), channels=1, seed=0, values=(IGNORE, 0, 1, 2)):
    """Random labels ``y`` (B, *spatial) and an image whose channel ``c`` is ``10 * y + c``."""
    g = torch.Generator().manual_seed(seed)
    choices = torch.tensor(values)
    y = choices[torch.randint(len(values), shape, generator=g)]
    x = torch.stack([y.float() * 10 + c for c in range(channels)], dim=1)
    return x, y


def _dihedral(a: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of ``a`` in its last two axes."""
    out = []
    for k in range(4):
        r = torch.rot90(a, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((8, 24, 24), 1), ((8, 24, 24), 5), ((6, 4, 16, 16), 1)],
    ids=["2d", "2.5d-5-channels", "3d"],
)
def test_labels_follow_the_image_under_flips_and_rotations(shape, channels):
    x, y = _batch(shape, channels)
    aug = Augmentation(flips=True, rotations=True)
    seen = set()
    for seed in range(6):
        xa, ya = aug(x, y, torch.Generator().manual_seed(seed))
        assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == y.dtype
        for c in range(channels):
            torch.testing.assert_close(xa[:, c], ya.float() * 10 + c, rtol=0, atol=0)
        for i in range(len(y)):
            matches = [k for k, t in enumerate(_dihedral(y[i])) if torch.equal(t, ya[i])]
            assert matches, "the label patch is not a flip/rotation of the original"
            seen.add(matches[0])
    assert len(seen) >= 6, "flips and rotations should produce most of the 8 orientations"


def test_3d_patches_are_transformed_in_plane_only():
    x, y = _batch((6, 5, 16, 16))
    for seed in range(4):
        _, ya = Augmentation()(x, y, torch.Generator().manual_seed(seed))
        for i in range(len(y)):
            # a flip/rotation of the (y, x) planes, slice order kept (a z flip would match none)
            assert any(torch.equal(t, ya[i]) for t in _dihedral(y[i]))
            assert not torch.equal(ya[i], y[i].flip(0))


def test_non_square_patches_are_not_rotated():
    x, y = _batch((8, 16, 28))
    aug = Augmentation(flips=False, rotations=True)
    for seed in range(5):
        xa, ya = aug(x, y, torch.Generator().manual_seed(seed))
        assert xa.shape == x.shape and ya.shape == y.shape
        torch.testing.assert_close(ya, y, rtol=0, atol=0)
    # flips still apply, and keep the shapes
    xa, ya = Augmentation(flips=True, rotations=True)(x, y, torch.Generator().manual_seed(1))
    assert ya.shape == (8, 16, 28)
    torch.testing.assert_close(xa[:, 0], ya.float() * 10, rtol=0, atol=0)


def test_no_augmentation_is_identity():
    x, y = _batch()
    xa, ya = Augmentation(flips=False, rotations=False)(x, y, torch.Generator().manual_seed(0))
    torch.testing.assert_close(xa, x, rtol=0, atol=0)
    torch.testing.assert_close(ya, y, rtol=0, atol=0)


def test_same_generator_seed_gives_same_batch():
    x, y = _batch()
    aug = Augmentation(intensity=0.1, elastic=3.0)
    a = aug(x, y, torch.Generator().manual_seed(3))
    b = aug(x, y, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def _blocky(shape=(6, 48, 48), block=8, seed=0):
    """Labels in 8x8 blocks of values {IGNORE, 0, 1, 2, 5} and image = 10 * label."""
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    values = torch.tensor([IGNORE, 0, 1, 2, 5])
    coarse = values[torch.randint(len(values), (b, h // block, w // block), generator=g)]
    y = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)
    return y.float()[:, None] * 10, y


@pytest.mark.parametrize("amplitude", [2.0, 6.0])
def test_elastic_deformation_never_invents_labels_and_keeps_alignment(amplitude):
    x, y = _blocky()
    aug = Augmentation(flips=False, rotations=False, elastic=amplitude)
    xa, ya = aug(x, y, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    assert set(ya.unique().tolist()) <= set(y.unique().tolist())
    assert not torch.equal(ya, y), "the deformation should move something"
    # nearest-neighbour labels and bilinear image agree away from block edges
    agree = (xa[:, 0] - 10 * ya.float()).abs() < 5
    assert agree.float().mean() >= 0.85


def test_elastic_deformation_of_3d_patches():
    _, y = _blocky((2, 32, 32))
    y = y[:, None].expand(2, 4, 32, 32).clone()  # (B, D, H, W)
    x = y[:, None].float() * 10
    xa, ya = Augmentation(flips=False, rotations=False, elastic=3.0)(x, y, torch.Generator().manual_seed(1))
    assert xa.shape == x.shape and ya.shape == y.shape
    assert set(ya.unique().tolist()) <= set(y.unique().tolist())
    agree = (xa[:, 0] - 10 * ya.float()).abs() < 5
    assert agree.float().mean() >= 0.85
    # the same in-plane field for every slice: identical slices stay identical
    for k in range(1, 4):
        torch.testing.assert_close(ya[:, k], ya[:, 0], rtol=0, atol=0)


def test_intensity_jitter_changes_only_the_image():
    x, y = _batch((16, 12, 12), channels=3)
    aug = Augmentation(flips=False, rotations=False, intensity=0.2)
    xa, ya = aug(x, y, torch.Generator().manual_seed(0))
    torch.testing.assert_close(ya, y, rtol=0, atol=0)
    assert not torch.allclose(xa, x)
    for i in range(len(x)):  # per sample: x' = gain * x + offset, gain in [0.8, 1.2], offset in [-0.2, 0.2]
        a = x[i].ravel().double()
        b = xa[i].ravel().double()
        gain, offset = np.polyfit(a.numpy(), b.numpy(), 1)
        assert 0.8 - 1e-6 <= gain <= 1.2 + 1e-6
        assert -0.2 - 1e-5 <= offset <= 0.2 + 1e-5
        torch.testing.assert_close(b, gain * a + offset, rtol=0, atol=1e-4)


def test_context_dropout_sets_the_extra_channels_of_some_samples_to_uniform():
    x, y = _batch((64, 10, 10), channels=4)  # one image channel, three forest probabilities
    aug = Augmentation(flips=False, rotations=False, context_dropout=0.5)
    xa, ya = aug(x, y, torch.Generator().manual_seed(0), image_channels=1)
    torch.testing.assert_close(ya, y, rtol=0, atol=0)
    torch.testing.assert_close(xa[:, :1], x[:, :1], rtol=0, atol=0)  # the image is never dropped
    dropped = torch.tensor([bool((xa[i, 1:] == 1 / 3).all()) for i in range(len(x))])
    kept = torch.tensor([torch.equal(xa[i, 1:], x[i, 1:]) for i in range(len(x))])
    assert bool((dropped ^ kept).all())  # each sample either whole or uniform
    assert 16 <= int(dropped.sum()) <= 48
    assert torch.equal(x, _batch((64, 10, 10), channels=4)[0])  # the input batch is not changed in place


def test_context_dropout_leaves_image_only_batches_alone():
    x, y = _batch((8, 10, 10), channels=3)
    aug = Augmentation(flips=False, rotations=False, context_dropout=1.0)
    for image_channels in (None, 3):
        xa, _ = aug(x, y, torch.Generator().manual_seed(0), image_channels=image_channels)
        assert torch.equal(xa, x)
