"""MUNet (Zhang, Cheng & Gan, "MUNet: A Multi-scale U-Net Framework for Medical Image Segmentation").

A U-Net with a mask head at every decoder scale. Every scale's mask is resized to the input and the masks are fused
by area-weighted voting; every scale is trained (deep supervision) with a Dice loss.

What the paper specifies, and how it is built here (2D and 3D):

* **Backbone** (encoder): replaceable in the paper (ResNet, Inception, DenseNet, ...; five blocks, stride-2
  convolutions instead of max pooling). Here it is :class:`~napari_msd.models.unet.UNet`'s encoder (two
  convolution, batch norm, ReLU per level, max pooling), so the pooling grid, the padding to it and the
  crop-and-stitch tiling are the U-Net's; ``depth = 4`` gives the paper's four decoder steps and four masks
  (its branches B2..B5).
* **Decoder step**: up-sampling, concatenation with the encoder's map of that scale, then three "DBL" blocks
  (convolution, batch norm, leaky ReLU). Built as written: three 3x3 convolutions, batch norm (or none, as the
  U-Net: see its module docstring for why not instance norm), leaky ReLU of slope 0.1 (the paper names the DBL block
  of YOLOv3 / Darknet, whose slope is 0.1; the paper gives none). The up-sampling is the U-Net's transposed
  convolution (the paper does not say which up-sampling).
* **Mask heads**: a 1x1 convolution at every decoder step, with ``out_channels`` classes and a softmax (the paper
  has one class and a sigmoid; every network here has K classes). The finest head is the U-Net's ``head``, the
  others are :attr:`MUNet.coarse_heads`. Unlike the paper's backbone, whose first block already halves the image,
  the finest decoder step here is at full resolution.
* **Resizing**: every mask is brought to the input's size by bilinear interpolation (trilinear in 3D;
  ``align_corners=False``). The logits are resized, so each scale's output is a full-size logit map like any
  network's (the paper resizes the masks).
* **Fusion**, the paper's eq. (1)-(2): ``M = sum_k alpha_k M'_k`` with ``alpha_k = 1 - A_k / (W H)``, ``A_k`` the
  area of mask ``M'_k`` (the resized masks are all ``W x H``, so ``A_k`` is the area the mask covers: the sum of
  its values in [0, 1]; "we pay more attention to small parts and details"). For K classes: per class ``c``,
  ``alpha_kc = 1 - A_kc / |window|``, with ``A_kc`` the sum of scale ``k``'s probability of ``c``. Silent in the
  paper, chosen here:

  - *A window instead of the whole image*: the areas are taken over the ``(2 r + 1)``-wide window centred on each
    pixel, clipped to the input (``r = fusion_radius``, default 32: about the 64-pixel training patch, the input
    image the network is trained on), see :mod:`.windows`. Over the whole image, a tile would be fused with other
    weights than the whole image, and napari-msd predicts block by block; on an image of at most ``r + 1`` pixels
    per axis the window is the whole image and this is the paper's formula.
  - *Normalised over the scales*: the fused probability of class ``c`` is ``sum_k w_kc p_kc`` with
    ``w_kc = alpha_kc / sum_j alpha_jc`` (a weighted vote among the scales: where they agree, the fused output is
    what they say), then renormalised over the classes. The paper's sum is unnormalised (it thresholds one class);
    without normalising over the scales, K classes' areas would also reweight the classes against each other (in
    a region of one class, all its ``alpha`` are near 0 and the others' near 1).
  - *A vote, not trained through*: the weights are computed from the probabilities without gradient (the paper's
    loss is on the branches; it fuses them to give its result). The gradient reaches every scale through the
    weighted probabilities.
  - A bias :attr:`MUNet.head_bias` (zero at start) is added to the fused logits: the output layer's bias that the
    class-prior correction (``training.prior``) shifts, exactly, for the fused output.
  - With one output channel (a regression, as self-supervised pretraining uses it) there is no area: the scales'
    outputs are averaged.

* **Loss**, eq. (3)-(5): ``L = L_cls + 0.25 * sum_k (1 - Dice(v_k, v))``, the Dice losses of the branches
  weighted 0.25 against a focal loss of an image-classification branch, which has no counterpart here (napari-msd
  does not classify images, so the 0.25 has nothing to balance). The training engine
  (``training.deep_supervision``) takes every scale's output from :meth:`MUNet.forward_scales` and averages the
  sparse loss over the scales and the fused output; the sparse loss is cross-entropy over the painted pixels
  (which sparse strokes need: the paper's mask loss is Dice alone, on dense masks) plus Dice weighted
  :attr:`MUNet.dice_weight` = 1.0, the weight a training uses unless told otherwise (``dice_weight`` of the
  training configuration, ``--dice``): the paper's Dice on every scale, as strong as the cross-entropy.

Not built: the image-classification branch on the bottleneck, multi-scale input resizing (a training-time
augmentation in the paper), ensembles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_input
from .unet import _CONV, UNet, crop_to, pad_to_multiple
from .windows import box_mean

LEAKY_SLOPE = 0.1  # Darknet's DBL block (the paper names it and gives no slope)
DECODER_CONVS = 3  # DBL blocks per decoder step


def fusion_weights(probabilities: torch.Tensor, radius: int, eps: float = 1e-6) -> torch.Tensor:
    """The scales' weights ``w_kc`` per class and pixel, ``(S, N, K, *spatial)``, from their probabilities
    ``(S, N, K, *spatial)``: ``alpha_kc = 1 - (mean of p_kc over the window of half-width radius)``, plus ``eps``
    (which keeps the weights defined where every scale covers the whole window with class c), normalised to sum to 1
    over the scales ``k``."""
    s = probabilities.shape
    ndim = len(s) - 3
    area = box_mean(probabilities.flatten(0, 1), [radius] * ndim).view(s)
    alpha = torch.clamp(1.0 - area, min=0.0) + eps
    return alpha / alpha.sum(0, keepdim=True)


def fuse_scales(logits: list[torch.Tensor], radius: int) -> torch.Tensor:
    """Area-weighted fusion of full-size per-scale logits ``(N, K, *spatial)`` into log-probabilities (see the
    module docstring); with one channel, their mean."""
    if logits[0].shape[1] == 1:
        return torch.stack(logits).mean(0)
    log_p = torch.stack([torch.log_softmax(z.float(), dim=1) for z in logits])
    weights = fusion_weights(log_p.detach().exp(), radius)
    fused = torch.logsumexp(torch.log(weights) + log_p, dim=0)
    return (fused - torch.logsumexp(fused, dim=1, keepdim=True)).to(logits[0].dtype)


def resize_to(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Bilinear (trilinear in 3D) resizing of ``(N, C, *spatial)`` to ``size``."""
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class MUNet(UNet):
    """MUNet on :class:`~napari_msd.models.unet.UNet`'s encoder: a mask head at every decoder level, area-weighted
    fusion; for ``(N, in_channels, *spatial)`` images of any size (see the module docstring).

    Parameters as :class:`~napari_msd.models.unet.UNet`, plus ``fusion_radius``: half-width in pixels of the window
    the masks' areas are measured over (0: each pixel alone).

    ``model(x)`` gives the fused logits ``(N, out_channels, *spatial)`` (log-probabilities plus
    :attr:`head_bias`); :meth:`forward_scales` also every scale's logits, for deep supervision.
    """

    arch = "munet"
    dice_weight = 1.0  # the Dice term's weight a training uses unless told otherwise (see the module docstring)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ndim: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        norm: str | None = "batch",
        anisotropic_levels: int = 0,
        fusion_radius: int = 32,
    ):
        super().__init__(in_channels, out_channels, ndim, depth, base_channels, norm, anisotropic_levels)
        if int(fusion_radius) < 0:
            raise ValueError(f"fusion_radius is a window's half-width in pixels (>= 0), got {fusion_radius}")
        self.fusion_radius = int(fusion_radius)
        self.coarse_heads = nn.ModuleList(
            _CONV[ndim](self.base_channels * 2**k, self.out_channels, 1) for k in range(1, self.depth)
        )
        self.head_bias = nn.Parameter(torch.zeros(self.out_channels))

    def _decoder_block(self, c_in: int, c_out: int, level: int) -> nn.Sequential:
        return self._block(c_in, c_out, level, convs=DECODER_CONVS, leaky=LEAKY_SLOPE)

    @property
    def receptive_field(self) -> int:
        """Upper bound of the receptive-field radius in pixels, in-plane (it also bounds z).

        The U-Net's bound (:attr:`UNet.receptive_field <napari_msd.models.unet.UNet.receptive_field>`) with a third
        decoder convolution per level (``2**k`` pixels further at level ``k``): ``8 * 2**depth - 6``. A coarse
        head at level ``k`` reads its decoder's output through bilinear resizing, which reaches at most
        ``1.5 * 2**k - 1`` pixels beyond that output's reach, less than the finer levels' convolutions add, so
        the finest path bounds every scale. The fusion's window adds ``fusion_radius``.
        """
        return int(super().receptive_field) + (2**self.depth - 1) * (DECODER_CONVS - 2) + self.fusion_radius

    @property
    def activation_maps(self) -> int:
        """Rough number of full-resolution maps a forward pass holds at once (inference), for tile sizes: the U-Net's,
        one more decoder map, the coarser decoder outputs kept for their heads, and about 8 maps per class and
        scale for the fusion (logits, log-probabilities, probabilities, areas, weights)."""
        return 8 * self.base_channels + self.in_channels + (8 * self.depth + 2) * self.out_channels

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {**super().config(), "fusion_radius": self.fusion_radius}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, *spatial)`` to the fused ``(N, out_channels, *spatial)`` logits, any spatial size."""
        return self.forward_scales(x)[-1]

    def forward_scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder scale's logits resized to the input, finest first, then the fused logits: ``depth + 1``
        tensors ``(N, out_channels, *spatial)``."""
        check_input(type(self).__name__, x, self.in_channels, self.ndim)
        spatial = x.shape[2:]
        x = pad_to_multiple(x.to(self.head.weight.dtype), self.pool_factors)
        size = list(x.shape[2:])
        levels = self._decode(x, every_level=True)
        scales = [self.head(levels[0])]
        scales += [resize_to(head(level), size) for head, level in zip(self.coarse_heads, levels[1:])]
        scales = [crop_to(s, spatial) for s in scales]
        return [*scales, fuse_scales(scales, self.fusion_radius) + self.head_bias.view(1, -1, *([1] * self.ndim))]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fusion_radius={self.fusion_radius}"
