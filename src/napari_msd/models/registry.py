"""Architectures by name, so a model file can rebuild its network from plain data."""

from __future__ import annotations

from typing import Any

from torch import nn

from .ensemble import Ensemble, ensemble_config
from .forest_buffers import attach_forest
from .gated_unet import GatedUNet
from .msd import MSDNet
from .munet import MUNet
from .unet import UNet

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "msd": MSDNet,
    "unet": UNet,
    "munet": MUNet,
    "gated_unet": GatedUNet,
    "ensemble": Ensemble,
}
PRESETS: dict[str, dict[str, Any]] = {  # what a new network of each architecture is unless told otherwise
    "msd": {"depth": 100, "width": 1},
    "unet": {"depth": 4, "base_channels": 32},
    "munet": {"depth": 4, "base_channels": 32},  # four decoder scales, as the paper's four mask branches
    "gated_unet": {"depth": 4, "base_channels": 32},  # the paper's gates: confidence at levels 0-1, channel+pixel above
}
PRESETS["ensemble"] = ensemble_config("msd", PRESETS["msd"], 3)  # three MS-D, trained from three seeds


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate architecture ``arch`` from the keyword arguments in ``config``; its ``forest`` entry, if any,
    gives the network the buffers of the forest whose probabilities it takes as input (``forest_buffers``)."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}") from None
    config = dict(config)
    forest = config.pop("forest", None)
    if forest is not None and arch == "ensemble":
        raise ValueError("an ensemble takes no forest channels; train its members without them")
    try:
        net = cls(**config)
    except TypeError as err:
        raise ValueError(f"invalid {arch} configuration {config}: {err}") from None
    try:
        return attach_forest(net, forest)
    except TypeError as err:
        raise ValueError(f"invalid forest description {forest}: {err}") from None


def receptive_field(model: nn.Module) -> int:
    """Theoretical receptive-field radius in pixels of any registered model."""
    value: Any = model.receptive_field  # an attribute of every registered network (nn.Module types it as a tensor)
    return int(value)
