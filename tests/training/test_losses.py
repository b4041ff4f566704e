"""Sparse losses: unlabeled pixels count for nothing; class weights and Dice behave as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_msd.training.losses import SparseLoss, auto_class_weights
from napari_msd.training.sampling import IGNORE


def _batch(seed=0, shape=(3, 3, 10, 12), ignored=0.6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g)
    target = torch.randint(shape[1], (shape[0], *shape[2:]), generator=g)
    target[torch.rand(target.shape, generator=g) < ignored] = IGNORE
    return logits, target


LOSSES = {
    "plain": lambda: SparseLoss(3),
    "weighted": lambda: SparseLoss(3, [0.5, 2.0, 4.0]),
    "dice": lambda: SparseLoss(3, dice_weight=1.0),
    "weighted+dice": lambda: SparseLoss(3, [0.5, 2.0, 4.0], dice_weight=0.5),
}


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_change_neither_loss_nor_gradient(name):
    loss_fn = LOSSES[name]()
    logits, target = _batch()
    ignored = target == IGNORE
    assert ignored.any() and (~ignored).any()

    a = logits.clone().requires_grad_(True)
    loss_a = loss_fn(a, target)
    loss_a.backward()

    perturbed = logits.clone()
    noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(9)) * 50
    mask = ignored[:, None].expand_as(logits)
    perturbed[mask] += noise[mask]
    b = perturbed.requires_grad_(True)
    loss_b = loss_fn(b, target)
    loss_b.backward()

    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.grad[~mask], b.grad[~mask], rtol=1e-5, atol=1e-8)
    assert (a.grad[mask] == 0).all() and (b.grad[mask] == 0).all()
    assert a.grad[~mask].abs().sum() > 0


def test_cross_entropy_is_the_weighted_mean_over_labeled_pixels():
    logits, target = _batch(1)
    weights = torch.tensor([0.5, 2.0, 4.0])
    labeled = target != IGNORE
    logp = F.log_softmax(logits, 1).movedim(1, -1)[labeled]  # (M, K)
    t = target[labeled]
    w = weights[t]
    expected = -(w * logp[torch.arange(len(t)), t]).sum() / w.sum()
    torch.testing.assert_close(SparseLoss(3, weights.tolist())(logits, target), expected, rtol=1e-5, atol=1e-6)
    unweighted = -logp[torch.arange(len(t)), t].mean()
    torch.testing.assert_close(SparseLoss(3)(logits, target), unweighted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_batch_gives_zero_with_a_graph(name):
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), IGNORE)
    loss = LOSSES[name]()(logits, target)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert loss.requires_grad
    loss.backward()  # an optimizer step on it must not fail
    assert logits.grad is not None and (logits.grad == 0).all()


def test_3d_logits():
    logits = torch.randn(2, 2, 4, 6, 6, requires_grad=True)
    target = torch.randint(2, (2, 4, 6, 6))
    target[:, :2] = IGNORE
    loss = SparseLoss(2, dice_weight=0.3)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and (logits.grad[:, :, :2] == 0).all()


# -- class weights -----------------------------------------------------------------------------------------


def test_class_weights_follow_median_frequency():
    weights = auto_class_weights({1: 100, 2: 400, 3: 1600}, 3)
    assert weights == pytest.approx([4.0, 1.0, 0.25])
    # rarer classes weigh more, and weight * frequency is the same for every class
    assert weights == pytest.approx(auto_class_weights([100, 400, 1600], 3))


def test_class_weights_are_clipped():
    weights = auto_class_weights({1: 1, 2: 1000, 3: 1_000_000}, 3)
    assert weights == pytest.approx([10.0, 1.0, 0.1])


def test_class_weights_of_unlabeled_classes_are_one():
    assert auto_class_weights({1: 50, 3: 200}, 3) == pytest.approx([2.5, 1.0, 0.625])  # median of 50, 200 is 125
    assert auto_class_weights({1: 30}, 2) == pytest.approx([1.0, 1.0])
    assert auto_class_weights({}, 2) == [1.0, 1.0]


def test_wrong_number_of_class_weights_is_refused():
    with pytest.raises(ValueError) as err:
        SparseLoss(3, [1.0, 2.0])
    assert "\n" not in str(err.value) and "3" in str(err.value)


# -- dice --------------------------------------------------------------------------------------------------


def _dice_term(logits, target):
    """The Dice part of the loss alone: (CE + Dice) - CE."""
    return (SparseLoss(3, dice_weight=1.0)(logits, target) - SparseLoss(3)(logits, target)).item()


def test_dice_term_is_zero_for_perfect_predictions():
    _, target = _batch(2)
    perfect = F.one_hot(target.clamp(min=0), 3).movedim(-1, 1).float() * 60 - 30
    assert SparseLoss(3, dice_weight=1.0)(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    assert _dice_term(perfect, target) == pytest.approx(0.0, abs=1e-5)


def test_dice_term_is_between_zero_and_one():
    _, target = _batch(3)
    wrong = F.one_hot((target.clamp(min=0) + 1) % 3, 3).movedim(-1, 1).float() * 60 - 30
    assert _dice_term(wrong, target) == pytest.approx(1.0, abs=1e-4)
    for seed in range(5):
        logits, target = _batch(seed)
        assert 0.0 <= _dice_term(logits * 3, target) <= 1.0
    # scale: the dice weight multiplies a term of at most 1
    logits, target = _batch(4)
    ce = SparseLoss(3)(logits, target).item()
    assert ce <= SparseLoss(3, dice_weight=2.0)(logits, target).item() <= ce + 2.0
