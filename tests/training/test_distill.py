"""The parent teacher of a fine-tuning (training.distill)."""

from __future__ import annotations

import pytest
import torch

from napari_msd.models import MSDNet
from napari_msd.training.distill import ParentTeacher
from napari_msd.training.sampling import IGNORE


def _net(seed: int) -> MSDNet:
    torch.manual_seed(seed)
    net = MSDNet(in_channels=1, out_channels=3, depth=4, width=1)
    with torch.no_grad():  # a new MS-D's output layer starts at zero (uniform predictions): give it an opinion
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    return net


def test_the_loss_is_smallest_where_the_student_predicts_as_its_parent():
    parent, other = _net(0), _net(1)
    teacher = ParentTeacher(parent, weight=2.0)
    x = torch.randn(2, 1, 16, 16)
    y = torch.full((2, 16, 16), IGNORE, dtype=torch.long)
    with torch.no_grad():
        same = teacher.loss(parent(x), x, y)
        moved = teacher.loss(other(x), x, y)
        probs = torch.softmax(parent(x), 1)
    entropy = -(probs * probs.log()).sum(1).mean()
    assert same == pytest.approx(2.0 * float(entropy), rel=1e-4)  # cross-entropy to itself is its entropy
    assert moved > same


def test_labeled_pixels_are_left_to_their_labels_and_the_parent_stays_frozen():
    parent = _net(0)
    teacher = ParentTeacher(parent, weight=1.0)
    before = {k: v.clone() for k, v in teacher.parent.state_dict().items()}
    x = torch.randn(1, 1, 16, 16)
    student = _net(1)
    labeled = torch.ones((1, 16, 16), dtype=torch.long)
    assert float(teacher.loss(student(x), x, labeled).detach()) == 0.0
    half = labeled.clone()
    half[:, :8] = IGNORE
    teacher.loss(student(x), x, half).backward()
    assert all(p.grad is None for p in teacher.parent.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.parent.state_dict().items())
    with torch.no_grad():  # the copy does not follow the network it was made from
        next(parent.parameters()).add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in teacher.parent.state_dict().items())
    with pytest.raises(ValueError, match="weight"):
        ParentTeacher(parent, weight=0)
