"""Networks: Mixed-Scale Dense (MS-D), U-Net, MUNet, the gated-skip U-Net and ensembles of them, built by name from
plain configuration."""

from .ensemble import Ensemble, ensemble_config
from .gated_unet import GatedUNet
from .msd import MSDNet, msd_parameter_count
from .munet import MUNet
from .registry import ARCHITECTURES, build_model, receptive_field
from .unet import UNet

__all__ = [
    "ARCHITECTURES",
    "Ensemble",
    "GatedUNet",
    "MSDNet",
    "MUNet",
    "UNet",
    "build_model",
    "ensemble_config",
    "msd_parameter_count",
    "receptive_field",
]
