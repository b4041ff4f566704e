"""Self-supervised pretraining on the image itself, before (or while) a person paints.

The network learns to predict hidden pixels from their surroundings (blind-spot masking, as Noise2Void, Krull et
al. CVPR 2019, and DenoiSeg, Buchholz et al. 2020): in each patch a small fraction of pixels is replaced by a random
neighbour's value and the network, with a one-channel head, is trained to give back the original values there.
That needs no labels, so it can run on every pixel of the image while strokes are still being painted. A
segmentation training then starts from the learned body (every weight but the output head,
:func:`apply_pretrained`), with the pretraining's intensity normalisation.

Pretrained bodies are stored as small files (:func:`save_pretrained`, :func:`load_pretrained`) and cached per image
and architecture (:func:`cache_key`, :func:`cache_path`), so every training and retraining on that image starts from
them. No napari, no Qt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.device import cpu_threads, select_device
from ..base.inputs import InputSpec, mirror, read_input
from ..base.normalization import Normalization, estimate_normalization
from ..errors import NapariMsdError
from ..models.registry import PRESETS, build_model
from .optim import Adam

FORMAT = "napari-msd pretrained body"
FORMAT_VERSION = 1
HEAD_PARAMETERS = ("head_weight", "head_bias", "head.weight", "head.bias")  # MS-D's and the U-Net's output layer
HEAD_PREFIXES = ("coarse_heads.",)  # MUNet's mask heads of the coarser scales: outputs too, never pretrained


def is_head(key: str) -> bool:
    """Whether the parameter ``key`` belongs to a network's output heads (not carried by a pretrained body)."""
    return key in HEAD_PARAMETERS or key.startswith(HEAD_PREFIXES)


NEIGHBOURHOOD = 2  # a hidden pixel takes the value of a random pixel at most this far away (not itself)
_Index = tuple[int | slice | np.ndarray, ...]  # a numpy index (mypy types a tuple literal mixing these as object)


class PretrainError(NapariMsdError):
    """Pretrained weights that cannot be made or used; the message says what to do."""


@dataclass
class PretrainConfig:
    """What shapes a pretraining run; ``steps`` and/or ``time_limit`` (seconds) bound it."""

    arch: str = "msd"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of PRESETS[arch], as TrainConfig.model
    input: InputSpec = field(default_factory=InputSpec)
    patch_size: int = 64  # in-plane side (3D: 48)
    batch_size: int = 16
    steps: int | None = None
    time_limit: float | None = 300.0
    learning_rate: float = 1e-3
    mask_fraction: float = 0.015  # of each patch's pixels hidden per step (Noise2Void: 64 of 64 x 64)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def check(self) -> None:
        if self.steps is None and self.time_limit is None:
            raise PretrainError("give a number of steps or a time limit, or pretraining would never end")
        if self.steps is not None and self.steps < 1 or self.time_limit is not None and self.time_limit <= 0:
            raise PretrainError("steps and time limit must be positive")
        if not 0 < self.mask_fraction < 0.5:
            raise PretrainError(f"the masked fraction must be in (0, 0.5), got {self.mask_fraction}")
        if self.batch_size < 1 or self.patch_size < 8:
            raise PretrainError("batch size must be >= 1 and patch size >= 8")

    def model_config(self) -> dict[str, Any]:
        """The network's full configuration, as a segmentation model of the same architecture would have it
        (apart from its number of outputs)."""
        return {
            **PRESETS.get(self.arch, {}),
            **self.model,
            "in_channels": self.input.in_channels,
            "ndim": self.input.model_ndim,
        }


@dataclass(frozen=True)
class PretrainStep:
    step: int
    loss: float  # masked-pixel reconstruction error (normalised intensities, squared)
    elapsed: float  # seconds, pauses excluded
    progress: float | None  # 0..1 when steps or a time limit bound the run


@dataclass
class PretrainedBody:
    """A pretrained network body and what it fits: architecture, model configuration, input and normalisation."""

    arch: str
    model_config: dict[str, Any]  # without out_channels
    input: dict[str, Any]
    normalization: dict[str, Any]
    state: dict[str, torch.Tensor]  # every parameter but the head
    steps: int
    seconds: float
    image_key: str | None = None

    def describe(self) -> str:
        return f"{self.steps} steps ({self.seconds:.0f} s) of self-supervised pretraining"


# -- masking ---------------------------------------------------------------------------------------------------------
def blind_spot_mask(x: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(masked, mask)`` for a batch ``x`` (B, C, *spatial): ``fraction`` of each sample's positions (at least one)
    take, in every channel, the value of a random other position within :data:`NEIGHBOURHOOD` px; ``mask`` (B,
    *spatial, bool) marks them."""
    masked = x.copy()
    spatial = x.shape[2:]
    mask = np.zeros((x.shape[0], *spatial), bool)
    n = max(1, int(round(fraction * math.prod(spatial))))
    for b in range(x.shape[0]):
        where = [rng.integers(0, s, n) for s in spatial]
        offsets = rng.integers(-NEIGHBOURHOOD, NEIGHBOURHOOD + 1, (len(spatial), n))
        self_hit = ~offsets.any(axis=0)  # a zero offset would copy the pixel onto itself: step one along axis 0
        offsets[0, self_hit] = rng.choice([-1, 1], int(self_hit.sum()))
        source = [mirror(w + o, s) for w, o, s in zip(where, offsets, spatial)]  # reflected at the border
        back = np.logical_and.reduce([a == w for a, w in zip(source, where)])  # reflected onto itself: go the other way
        source = [np.where(back, mirror(w - o, s), a) for a, w, o, s in zip(source, where, offsets, spatial)]
        dst: _Index = (b, slice(None), *where)
        src: _Index = (b, slice(None), *source)
        masked[dst] = x[src]
        at: _Index = (b, *where)
        mask[at] = True
    return masked, mask


# -- files and cache -------------------------------------------------------------------------------------------------
def save_pretrained(path: str | os.PathLike[str], body: PretrainedBody) -> Path:
    """Write ``body`` to ``path`` (atomically: a partly written file never replaces a good one)."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": body.arch,
        "model_config": body.model_config,
        "input": body.input,
        "normalization": body.normalization,
        "steps": body.steps,
        "seconds": body.seconds,
        "image_key": body.image_key,
    }
    tmp = path.with_name(path.name + ".part")
    torch.save({"meta": json.dumps(meta), "state": {k: v.detach().cpu() for k, v in body.state.items()}}, tmp)
    os.replace(tmp, path)
    return path


def load_pretrained(path: str | os.PathLike[str]) -> PretrainedBody:
    """Read a file written by :func:`save_pretrained`; :class:`PretrainError` if it is anything else."""
    path = Path(path)
    if not path.is_file():
        raise PretrainError(
            f"pretrained weights {path} not found; make them with 'napari-msd pretrain IMAGE -o {path}'"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(raw["meta"])
        state = dict(raw["state"])
    except Exception:  # noqa: BLE001 - any failure means the same to the user
        raise PretrainError(
            f"{path} is not a napari-msd pretrained-weights file (made by 'napari-msd pretrain')"
        ) from None
    if meta.get("format") != FORMAT:
        raise PretrainError(f"{path} is not a napari-msd pretrained-weights file (made by 'napari-msd pretrain')")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise PretrainError(f"{path} was written by a newer napari-msd; update napari-msd to use it")
    return PretrainedBody(
        meta["arch"],
        meta["model_config"],
        meta["input"],
        meta["normalization"],
        state,
        int(meta["steps"]),
        float(meta["seconds"]),
        meta.get("image_key"),
    )


def image_fingerprint(image: Any, samples: int = 64) -> str:
    """A content hash of ``image`` that reads only ``samples`` evenly spaced planes (or rows of a 2D image): shape,
    dtype and those pixels, so a huge lazy volume is fingerprinted in a moment."""
    shape = tuple(int(s) for s in image.shape)
    digest = hashlib.blake2b(json.dumps([shape, str(np.dtype(image.dtype))]).encode(), digest_size=16)
    for i in np.unique(np.linspace(0, shape[0] - 1, min(samples, shape[0])).round().astype(int)):
        digest.update(np.ascontiguousarray(np.asarray(image[int(i)])).tobytes())
    return digest.hexdigest()


def cache_key(image: Any, arch: str, model_config: dict[str, Any], spec: InputSpec) -> str:
    """Key of the pretrained body for ``image`` and a network: the image's fingerprint and the architecture."""
    net = json.dumps(
        [arch, {k: v for k, v in sorted(model_config.items()) if k != "out_channels"}, spec.to_dict()], default=str
    )
    return f"{image_fingerprint(image)}-{hashlib.blake2b(net.encode(), digest_size=8).hexdigest()}"


def cache_dir() -> Path:
    """Where pretrained bodies are cached: ``$NAPARI_MSD_CACHE``, else ``$XDG_CACHE_HOME/napari-msd`` (default
    ``~/.cache/napari-msd``), subfolder ``pretrained``."""
    root = os.environ.get("NAPARI_MSD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(root) if os.environ.get("NAPARI_MSD_CACHE") else Path(root) / "napari-msd"
    return root / "pretrained"


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.pt"


# -- using a pretrained body -----------------------------------------------------------------------------------------
def check_compatible(body: PretrainedBody, arch: str, model_config: dict[str, Any], spec: InputSpec) -> None:
    """:class:`PretrainError` unless ``body`` was pretrained for this architecture, configuration and input."""
    want = {k: v for k, v in model_config.items() if k != "out_channels"}
    have = {k: v for k, v in body.model_config.items() if k != "out_channels"}
    if body.arch != arch or json.dumps(want, sort_keys=True, default=list) != json.dumps(
        have, sort_keys=True, default=list
    ):
        raise PretrainError(
            f"the pretrained weights are for {body.arch} {have}, not {arch} {want}; pretrain "
            "again for this network (or choose the network they were made for)"
        )
    if InputSpec.from_dict(body.input) != spec:
        raise PretrainError(
            f"the pretrained weights take {body.input['mode']} input, this network "
            f"{spec.mode}; pretrain again with the same input"
        )


def apply_pretrained(model: torch.nn.Module, body: PretrainedBody) -> int:
    """Load every parameter of ``body`` into ``model`` except the output head; returns how many tensors were set."""
    own = model.state_dict()
    missing = [k for k in own if not is_head(k) and k not in body.state]
    wrong = [k for k, v in body.state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if missing or wrong:
        raise PretrainError(
            f"the pretrained weights do not fit this network ({len(missing)} missing, {len(wrong)} "
            "of another shape); pretrain again for this network"
        )
    with torch.no_grad():
        for k, v in body.state.items():
            if k in own and not is_head(k):
                own[k].copy_(v)
    return sum(k in own and not is_head(k) for k in body.state)


# -- the pretrainer --------------------------------------------------------------------------------------------------
class Pretrainer:
    """Blind-spot pretraining of one network on ``images`` (lazy or in memory, all 2D or all 3D); :meth:`run` yields
    :class:`PretrainStep` events, :meth:`pause`, :meth:`resume` and :meth:`stop` work from any thread, and
    :meth:`body` is the result. ``start``: a body to continue (e.g. the cached one)."""

    def __init__(
        self,
        images: Sequence[Any],
        config: PretrainConfig,
        start: PretrainedBody | None = None,
        image_key: str | None = None,
    ):
        config.check()
        if not images:
            raise PretrainError("no image given to pretrain on")
        for im in images:
            config.input.check_image(len(im.shape))
        self.images, self.config, self.image_key = list(images), config, image_key
        self.device = select_device(config.device)
        if self.device.type == "cpu":
            torch.set_num_threads(config.threads or cpu_threads())
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model_config = config.model_config()
        self.model = build_model(config.arch, {**self.model_config, "out_channels": 1})
        if start is not None:
            check_compatible(start, config.arch, self.model_config, config.input)
            apply_pretrained(self.model, start)
            self.normalization = Normalization.from_dict(start.normalization)
        else:
            self.normalization = estimate_normalization(self.images, seed=config.seed)
        self.model.to(self.device).train()
        self.optimizer = Adam(self.model.parameters(), lr=config.learning_rate)
        side = 48 if config.input.mode == "3d" else config.patch_size
        ndim = 3 if config.input.mode == "3d" else 2
        smallest = min(min(im.shape[-ndim:]) if config.input.mode != "3d" else min(im.shape) for im in self.images)
        self.size = (min(side, smallest),) * ndim
        self.step = start.steps if start is not None else 0
        self.seconds = start.seconds if start is not None else 0.0
        self._first_step = self.step
        self._running, self._stop, self._lock = threading.Event(), threading.Event(), threading.Lock()
        self._running.set()

    # -- control ------------------------------------------------------------------------------
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # -- running ------------------------------------------------------------------------------
    def _patch(self) -> np.ndarray:
        image = self.images[self.rng.integers(len(self.images))]
        spec = self.config.input
        orientation = spec.orientations[self.rng.integers(len(spec.orientations))]
        center = [int(self.rng.integers(0, n)) for n in image.shape]
        x, _ = read_input(image, spec, center, self.size, orientation)
        x = self.normalization(x)
        axes = tuple(range(1, x.ndim))
        for axis in axes:  # random flips, and a random in-plane quarter turn
            if self.rng.random() < 0.5:
                x = np.flip(x, axis)
        if self.rng.random() < 0.5:
            x = np.rot90(x, 1, (axes[-2], axes[-1]))
        return np.ascontiguousarray(x)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = np.stack([self._patch() for _ in range(self.config.batch_size)])
        masked, mask = blind_spot_mask(x, self.config.mask_fraction, self.rng)
        target = x[:, x.shape[1] // 2]  # the centre slice of 2.5D input, the only channel otherwise
        return (
            torch.from_numpy(masked).to(self.device),
            torch.from_numpy(np.ascontiguousarray(target)).to(self.device),
            torch.from_numpy(mask).to(self.device),
        )

    def _progress(self, elapsed: float) -> float | None:
        parts = []
        if self.config.steps is not None:
            parts.append((self.step - self._first_step) / self.config.steps)
        if self.config.time_limit is not None:
            parts.append(elapsed / self.config.time_limit)
        return min(1.0, max(parts)) if parts else None

    def run(self) -> Iterator[PretrainStep]:
        """Pretrain until the steps or the time limit are used up, or :meth:`stop`; one event per step."""
        elapsed = 0.0
        while not self._stop.is_set():
            if not self._running.is_set():
                while not self._running.wait(0.05):
                    pass
                continue
            t0 = time.perf_counter()
            x, target, mask = self._batch()
            with self._lock:
                self.optimizer.zero_grad(set_to_none=True)
                out = self.model(x)[:, 0]
                loss = ((out - target)[mask] ** 2).mean()
                loss.backward()
                self.optimizer.step()
            dt = time.perf_counter() - t0
            elapsed += dt
            self.seconds += dt
            self.step += 1
            progress = self._progress(elapsed)
            yield PretrainStep(self.step, float(loss.detach()), elapsed, progress)
            if progress is not None and progress >= 1:
                break

    def body(self) -> PretrainedBody:
        """The network body as it is now (copied to the CPU)."""
        with self._lock:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items() if not is_head(k)}
        return PretrainedBody(
            self.config.arch,
            dict(self.model_config),
            self.config.input.to_dict(),
            self.normalization.to_dict(),
            state,
            self.step,
            self.seconds,
            self.image_key,
        )


__all__ = [
    "PretrainConfig",
    "PretrainError",
    "PretrainStep",
    "PretrainedBody",
    "Pretrainer",
    "apply_pretrained",
    "blind_spot_mask",
    "cache_key",
    "cache_path",
    "check_compatible",
    "image_fingerprint",
    "load_pretrained",
    "save_pretrained",
]
