"""Edge-aware Potts loss: boundaries cost least on image edges, and unlabeled pixels receive gradients."""

from __future__ import annotations

import pytest
import torch

from napari_msd.training.potts import EdgePotts, half_offsets


def _logits_with_boundary(column: int, shape=(1, 2, 16, 24), confidence=6.0):
    """Class 0 left of ``column``, class 1 from it on (confident logits)."""
    logits = torch.zeros(shape)
    logits[:, 0, ..., :column] = confidence
    logits[:, 1, ..., column:] = confidence
    return logits


def _step_image(column: int, shape=(1, 1, 16, 24)):
    image = torch.zeros(shape)
    image[..., column:] = 1.0
    return image


@pytest.mark.parametrize(
    "ndim, radius, expected", [(2, 1, 2), (2, 2, 6), (3, 1, 3), (3, 2, (6 + 12 + 8 + 6) // 2), (1, 3, 3)]
)
def test_half_offsets_hold_each_neighbour_pair_once(ndim, radius, expected):
    offsets = half_offsets(ndim, radius)
    assert len(offsets) == expected
    assert len(set(offsets)) == len(offsets)
    for d in offsets:
        assert tuple(-v for v in d) not in offsets
        assert 0 < sum(v * v for v in d) <= radius * radius


def test_one_class_everywhere_costs_nothing():
    logits = torch.zeros(2, 3, 10, 12)
    logits[:, 1] = 20.0
    loss = EdgePotts(1.0)(logits, torch.rand(2, 1, 10, 12))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_a_boundary_on_the_image_edge_costs_less_than_one_in_a_flat_region():
    image = _step_image(12)
    loss = EdgePotts(1.0, radius=3, sigma_intensity=0.1)
    on_edge = float(loss(_logits_with_boundary(12), image))
    for shifted in (8, 10, 14, 16):
        assert on_edge < 0.1 * float(loss(_logits_with_boundary(shifted), image))


def test_minimising_it_moves_an_unlabeled_boundary_onto_the_edge():
    """Only the image guides it: from a boundary 2 px off, gradient descent on the Potts loss (with the two
    outermost columns held by a labeled loss) ends with the boundary on the intensity edge."""
    image = _step_image(12)
    logits = _logits_with_boundary(10, confidence=1.0).requires_grad_(True)
    target = torch.full((1, 16, 24), -100, dtype=torch.long)
    target[..., :2], target[..., -2:] = 0, 1
    potts = EdgePotts(10.0, radius=3, sigma_intensity=0.1)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        loss = potts(logits, image) + torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
        loss.backward()
        opt.step()
    columns = logits.argmax(1)[0].float().mean(0)  # fraction of class 1 per column
    assert torch.equal(columns, (torch.arange(24) >= 12).float())


def test_gradients_reach_unlabeled_pixels_and_the_guide_gets_none():
    logits = torch.randn(2, 2, 12, 12, requires_grad=True)
    image = torch.rand(2, 1, 12, 12, requires_grad=True)
    EdgePotts(1.0)(logits, image).backward()
    assert (logits.grad.abs().sum(1) > 0).float().mean() > 0.99
    assert image.grad is None


def test_guide_is_the_centre_channel_of_a_2_5d_input():
    logits = torch.randn(1, 2, 10, 10)
    centre = torch.rand(1, 1, 10, 10)
    stack = torch.cat([torch.rand(1, 2, 10, 10), centre, torch.rand(1, 2, 10, 10)], dim=1)
    loss = EdgePotts(1.0)
    assert float(loss(logits, stack)) == pytest.approx(float(loss(logits, centre)), rel=1e-6)


def test_default_radius_is_3_in_2d_and_2_in_3d(monkeypatch):
    from napari_msd.training import potts

    used = []
    original = potts.half_offsets
    monkeypatch.setattr(
        potts, "half_offsets", lambda ndim, radius: used.append((ndim, radius)) or original(ndim, radius)
    )
    EdgePotts(1.0)(torch.randn(1, 2, 8, 8), torch.rand(1, 1, 8, 8))
    EdgePotts(1.0)(torch.randn(1, 2, 4, 8, 8), torch.rand(1, 1, 4, 8, 8))
    EdgePotts(1.0, radius=1)(torch.randn(1, 2, 4, 8, 8), torch.rand(1, 1, 4, 8, 8))
    assert used == [(2, 3), (3, 2), (3, 1)]


def test_volumes_use_3d_neighbourhoods():
    logits = torch.zeros(1, 2, 6, 8, 8)
    logits[:, 0, :3], logits[:, 1, 3:] = 8.0, 8.0  # boundary between planes 2 and 3
    flat = EdgePotts(1.0, radius=1)(logits, torch.zeros(1, 1, 6, 8, 8))
    edge = torch.zeros(1, 1, 6, 8, 8)
    edge[:, :, 3:] = 1.0
    assert float(flat) > 0
    assert float(EdgePotts(1.0, radius=1)(logits, edge)) < 0.01 * float(flat)


def test_weight_scales_the_loss_linearly():
    logits, image = torch.randn(1, 3, 9, 9), torch.rand(1, 1, 9, 9)
    assert float(EdgePotts(3.0)(logits, image)) == pytest.approx(3 * float(EdgePotts(1.0)(logits, image)), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"weight": -1.0}, {"radius": 0}, {"sigma_intensity": 0.0}, {"sigma_space": -2.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="edge-aware loss"):
        EdgePotts(**kwargs)
