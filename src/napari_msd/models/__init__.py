"""Networks: Mixed-Scale Dense (MS-D) and U-Net, built by name from plain configuration."""

from .msd import MSDNet, msd_parameter_count
from .registry import ARCHITECTURES, build_model, receptive_field
from .unet import UNet

__all__ = ["ARCHITECTURES", "MSDNet", "UNet", "build_model", "msd_parameter_count", "receptive_field"]
