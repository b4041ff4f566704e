"""Augmentation of training batches; labels follow the image exactly.

In-plane flips and 90-degree rotations (rotations only on square patches), optional
intensity jitter (gain and offset in normalised units) and optional elastic deformation
(a smooth random displacement field; images interpolated linearly, labels by nearest
neighbour, so no label value is ever invented). Optional context dropout: in a share of the
samples, the extra input channels beside the image (a forest's class probabilities) are set to
"no opinion" (uniform), so the network also learns to read the image alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    flips: bool = True
    rotations: bool = True
    intensity: float = 0.0  # e.g. 0.1: gain in [0.9, 1.1], offset in [-0.1, 0.1]
    elastic: float = 0.0  # displacement amplitude in pixels, e.g. 4
    elastic_grid: int = 8  # control points per axis of the random displacement field
    context_dropout: float = 0.0  # share of samples whose channels after the image's are set to uniform

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, image_channels: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``x`` (B, C, *spatial) and ``y`` (B, *spatial) alike, per sample. The intensity jitter changes the
        first ``image_channels`` channels only (default: all; others, such as a forest's probabilities, are not
        intensities)."""
        out_x, out_y = [], []
        for xi, yi in zip(x, y):
            xi, yi = self._geometric(xi, yi, generator)
            out_x.append(xi)
            out_y.append(yi)
        x, y = torch.stack(out_x), torch.stack(out_y)
        if self.elastic > 0:
            x, y = self._elastic(x, y, generator)
        if self.intensity > 0:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            gain = 1 + self.intensity * (2 * torch.rand(shape, generator=generator, device=x.device) - 1)
            offset = self.intensity * (2 * torch.rand(shape, generator=generator, device=x.device) - 1)
            n = x.shape[1] if image_channels is None else image_channels
            x = torch.cat([x[:, :n] * gain + offset, x[:, n:]], dim=1)
        if self.context_dropout > 0 and image_channels is not None and x.shape[1] > image_channels:
            x = self._drop_context(x, image_channels, generator)
        return x, y

    def _drop_context(self, x: torch.Tensor, image_channels: int, g: torch.Generator) -> torch.Tensor:
        """Set the channels after the first ``image_channels`` to ``1 / their number`` in a ``context_dropout``
        share of the samples (drawn per sample)."""
        drop = torch.rand(x.shape[0], generator=g, device=x.device) < self.context_dropout
        if not bool(drop.any()):
            return x
        x = x.clone()
        x[drop, image_channels:] = 1.0 / (x.shape[1] - image_channels)
        return x

    def _geometric(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = -2, -1  # in-plane axes (last two) of both x (C, ..., H, W) and y (..., H, W)
        if self.flips:
            if torch.rand((), generator=g) < 0.5:
                x, y = x.flip(w), y.flip(w)
            if torch.rand((), generator=g) < 0.5:
                x, y = x.flip(h), y.flip(h)
        if self.rotations and x.shape[h] == x.shape[w]:
            k = int(torch.randint(4, (), generator=g))
            x, y = torch.rot90(x, k, (h, w)), torch.rot90(y, k, (h, w))
        return x, y

    def _elastic(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Smooth in-plane displacement: random control points, bicubically upsampled."""
        b, spatial = x.shape[0], x.shape[2:]
        hw = spatial[-2:]
        coarse = torch.randn((b, 2, self.elastic_grid, self.elastic_grid), generator=g, device=x.device)
        field = F.interpolate(coarse, size=hw, mode="bicubic", align_corners=True)  # (B, 2, H, W) in pixels/amp
        scale = torch.tensor([2.0 / max(hw[1] - 1, 1), 2.0 / max(hw[0] - 1, 1)], device=x.device)
        disp = field.permute(0, 2, 3, 1) * self.elastic * scale  # (B, H, W, 2) as (dx, dy) in [-1, 1] units
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, hw[0], device=x.device), torch.linspace(-1, 1, hw[1], device=x.device), indexing="ij"
        )
        grid = torch.stack((xs, ys), dim=-1)[None] + disp
        if len(spatial) == 3:  # 3D: the same in-plane field for every slice of the patch
            d = spatial[0]
            grid = grid[:, None].expand(b, d, *hw, 2)
            zs = torch.linspace(-1, 1, d, device=x.device).view(1, d, 1, 1, 1).expand(b, d, *hw, 1)
            grid = torch.cat((grid, zs), dim=-1)
        grid = grid.to(x.dtype)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        y = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="reflection", align_corners=True)
        y = y[:, 0].round().long()
        return x, y
