"""A random forest's trees held as buffers of a network, so that a network whose input includes the forest's class
probabilities (``napari_msd.base.forest_channels``) is saved, loaded, copied and sent between processes with its
state dict, like any weight.

The trees of the forest are concatenated node by node: ``left`` and ``right`` children (-1 at a leaf, indices
within the node's own tree), the ``feature`` a node splits on, its ``threshold`` (float64, kept as its int64 bit
pattern so that no device without float64 changes it) and ``value``, the class fractions of the training pixels
that reach the node. ``config()`` holds what it takes to allocate them again (classes, feature count, node count
and depth of every tree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class ForestBuffers(nn.Module):
    """Storage of a fitted forest: classes ``classes`` (of ``1..n_classes``) over ``n_features`` filter features at
    ``sigmas``; ``node_counts`` and ``depths`` per tree. Carries no computation (see ``base.forest_channels``)."""

    left: torch.Tensor
    right: torch.Tensor
    feature: torch.Tensor
    threshold_bits: torch.Tensor
    value: torch.Tensor

    def __init__(
        self,
        n_classes: int,
        classes: Sequence[int],
        n_features: int,
        sigmas: Sequence[float],
        node_counts: Sequence[int],
        depths: Sequence[int],
    ):
        super().__init__()
        if len(node_counts) != len(depths) or not node_counts:
            raise ValueError("a forest needs at least one tree, with one node count and one depth per tree")
        if not classes or max(classes) > n_classes or min(classes) < 1:
            raise ValueError(f"the forest's classes {list(classes)} must lie within 1..{n_classes}")
        self.n_classes, self.classes = int(n_classes), tuple(int(c) for c in classes)
        self.n_features, self.sigmas = int(n_features), tuple(float(s) for s in sigmas)
        self.node_counts, self.depths = tuple(int(n) for n in node_counts), tuple(int(d) for d in depths)
        total = sum(self.node_counts)
        self.register_buffer("left", torch.zeros(total, dtype=torch.int32))
        self.register_buffer("right", torch.zeros(total, dtype=torch.int32))
        self.register_buffer("feature", torch.zeros(total, dtype=torch.int32))
        self.register_buffer("threshold_bits", torch.zeros(total, dtype=torch.int64))
        self.register_buffer("value", torch.zeros(total, len(self.classes), dtype=torch.float32))
        self.cache: dict[str, Any] = {}  # what base.forest_channels rebuilt from the buffers (not state)

    def config(self) -> dict[str, Any]:
        return {
            "n_classes": self.n_classes,
            "classes": list(self.classes),
            "n_features": self.n_features,
            "sigmas": list(self.sigmas),
            "node_counts": list(self.node_counts),
            "depths": list(self.depths),
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loading other trees drops what was rebuilt from the old ones."""
        changed = any(
            not torch.equal(buf, state_dict[prefix + name])
            for name, buf in self.named_buffers(recurse=False)
            if prefix + name in state_dict and state_dict[prefix + name].shape == buf.shape
        )
        if changed:
            self.cache.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": {}}  # rebuilt trees stay behind when pickled or deep-copied

    @property
    def channels(self) -> int:
        """Input channels the forest adds to a network: one probability per class."""
        return self.n_classes


def attach_forest(net: nn.Module, config: dict[str, Any] | None) -> nn.Module:
    """Give ``net`` the (empty) forest buffers ``config`` describes, as its submodule ``forest``; ``None``: none."""
    if config is not None:
        net.forest = ForestBuffers(**config)
    return net


def forest_of(net: nn.Module) -> ForestBuffers | None:
    """The forest whose probabilities ``net`` takes as input channels, or None."""
    forest = getattr(net, "forest", None)
    return forest if isinstance(forest, ForestBuffers) else None


def model_config(net: Any) -> dict[str, Any]:
    """A registered network's configuration, its forest included: what ``build_model`` rebuilds it from."""
    config = dict(net.config())
    forest = forest_of(net)
    if forest is not None:
        config["forest"] = forest.config()
    return config
