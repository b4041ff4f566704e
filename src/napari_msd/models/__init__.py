"""Networks: Mixed-Scale Dense (MS-D), U-Net, MUNet and the gated-skip U-Net, built by name from plain configuration."""

from .gated_unet import GatedUNet
from .msd import MSDNet, msd_parameter_count
from .munet import MUNet
from .registry import ARCHITECTURES, build_model, receptive_field
from .unet import UNet

__all__ = [
    "ARCHITECTURES",
    "GatedUNet",
    "MSDNet",
    "MUNet",
    "UNet",
    "build_model",
    "msd_parameter_count",
    "receptive_field",
]
