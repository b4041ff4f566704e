"""Streaming, tiled prediction of images far larger than memory, with no napari and no Qt.

:class:`Predictor` wraps a trained network and its :class:`~napari_msd.io.model_file.ModelMetadata`.
Prediction is crop-and-stitch (:mod:`.tiling`): each block's input region (its output region plus
a halo, clipped to the image) is read, normalised and cut into network inputs exactly as in
training (:mod:`napari_msd.base.inputs`), and only the output region of the result is kept.
With a halo at least the receptive field, tiles equal whole-image prediction up to rounding; the
default halo is the model's *measured* effective halo (:func:`.halo.measure_effective_halo`) when
stored, else the theoretical receptive field.

* 2D models on ZYX volumes go plane by plane (normal to ``orientation``, ``xy`` by default), with
  the 2.5D context they were trained with (neighbouring slices as channels, mirrored at the first
  and last slice of the volume); their halo is 0 along the normal axis. Averaging predictions of
  several orientations is not implemented.
* 3D models get the same halo along every axis.

Reads of the next blocks are prefetched by a small thread pool while the network runs; inputs of
identical shape are batched. :meth:`Predictor.blocks` yields :class:`BlockDone` events in plan
order (or nearest-first around a region on screen), and :meth:`Predictor.run` also writes each
block into numpy or zarr outputs. A ``stop`` flag is checked between blocks. For an ensemble
(:class:`~napari_msd.models.ensemble.Ensemble`), ``blocks(..., disagreement=True)`` also gives each block's
members' disagreement (:func:`.uncertainty.disagreement`), from the same forward pass.

On a CPU, inputs are batched only up to 2^17 pixels per pass (larger batches were slower); elsewhere up
to ``batch_size`` within the memory budget. Default block shapes keep the activations of one batch under
``memory_budget`` (600 MiB): whole
planes up to 1024 x 1024 for 2D models (one slice deep), cubes up to 64^3 for 3D models, smaller
when the network is large. An MS-D network holds about ``in + width * depth`` fp32 maps per pixel
of a tile plus its tap scratch (``block * width * 3**ndim`` maps); a U-Net about
``6 * base_channels`` maps at full resolution (see :func:`activation_maps`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..base.device import select_device
from ..base.forest_channels import FittedForest
from ..base.inputs import ORIENTATIONS, InputSpec, mirror, plane_axes, read_input
from ..base.labels import labels_dtype
from ..base.normalization import Normalization
from ..io.model_file import ModelMetadata, load_model
from ..models.forest_buffers import forest_of
from .sinks import write_blocks
from .tiling import Block, Region, make_block, normalize_region, order_blocks, per_axis, plan_blocks
from .uncertainty import disagreement as member_disagreement

DEFAULT_MEMORY_BUDGET = 600 * 2**20
MAX_PLANE = 1024
MAX_CUBE = 64
CPU_BATCH_PIXELS = 2**17  # MS-D d=100 on 2 cores: 4 x 128^2 per pass 0.51 Mpx/s vs 0.45 one by one; 4 x 512^2 0.46
# vs 0.66 (256^2: 0.45 vs 0.79)

StopFlag = Callable[[], bool] | threading.Event | None


@dataclass(frozen=True)
class BlockDone:
    """One finished block: ``labels`` (1..K, uint8 or uint16) and ``probabilities`` (float32, ``(K, *block)``)
    of its output region, either ``None`` when not asked for; ``seconds`` of compute spent on it; an ensemble's
    ``disagreement`` (float32 in [0, 1], the block's shape) when asked for, else ``None``."""

    block: Block
    labels: np.ndarray | None
    probabilities: np.ndarray | None
    seconds: float
    disagreement: np.ndarray | None = None


def activation_maps(model: torch.nn.Module) -> int:
    """Rough number of per-pixel feature maps a forward pass of ``model`` holds at once (inference)."""
    net: Any = model  # a registered network's attributes (models.registry) are plain ints
    own = getattr(net, "activation_maps", None)  # the networks that estimate it themselves (MUNet, gated U-Net)
    if own is not None:
        return int(own)
    arch = getattr(net, "arch", "")
    if arch == "msd":
        taps = 3**net.ndim
        scratch = min(net.block, net.depth) * net.width * taps + taps
        return int(net.in_channels + net.width * net.depth + scratch + 2 * net.out_channels)
    if arch == "unet":
        return int(6 * net.base_channels + net.in_channels + 2 * net.out_channels)
    if arch == "ensemble":  # one member at a time, plus every member's probabilities kept for their mean
        return max(activation_maps(m) for m in net.members) + (len(net.members) + 2) * int(net.out_channels)
    return 64


def stopper(stop: StopFlag) -> Callable[[], bool]:
    """``stop`` (None, a callable or a ``threading.Event``) as a callable that says whether to stop."""
    if stop is None:
        return lambda: False
    if hasattr(stop, "is_set"):
        return stop.is_set
    return stop


class Predictor:
    """Tiled, streaming prediction with a trained ``model`` and its ``metadata`` (see the module docstring).

    ``device``: ``cpu``, ``cuda``, ``mps`` or ``auto``. ``batch_size``: most network inputs (planes or
    boxes) per forward pass, further limited by ``memory_budget`` bytes of activations. ``orientation``:
    the planes 2D models predict on volumes (default: the first orientation they were trained on).
    ``readers``: threads prefetching block inputs.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        metadata: ModelMetadata,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        *,
        orientation: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        readers: int = 2,
    ):
        self.metadata = metadata
        self.spec = InputSpec.from_dict(metadata.input or {})
        self.normalization = Normalization.from_dict(metadata.normalization) if metadata.normalization else None
        self.orientation = orientation or self.spec.orientations[0]
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {self.orientation!r}")
        buffers = forest_of(model)
        self.forest = None if buffers is None else FittedForest.from_buffers(buffers)  # its channels: extra input
        if self.forest is not None and (self.spec.model_ndim != 2 or self.orientation != "xy"):
            raise ValueError(
                "this model also takes a forest's probabilities of xy planes as input: predict xy planes with it"
            )
        expected = self.spec.in_channels + (0 if self.forest is None else self.forest.n_classes)
        in_channels, ndim = getattr(model, "in_channels", None), getattr(model, "ndim", None)
        if in_channels not in (None, expected) or ndim not in (None, self.spec.model_ndim):
            raise ValueError(
                f"the model ({in_channels} input channels, {ndim}D) does not match its input "
                f"description {self.spec.to_dict()}; re-save the model with the right input mode"
            )
        self.n_classes = int(getattr(model, "out_channels", len(metadata.class_names)))
        if batch_size < 1 or readers < 1:
            raise ValueError(f"batch_size and readers must be >= 1, got {batch_size} and {readers}")
        self.batch_size, self.memory_budget, self.readers = int(batch_size), int(memory_budget), int(readers)
        self.device = select_device(str(device))
        self.model = model.to(self.device).eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu", **kwargs: Any) -> Predictor:
        """A predictor for the model file at ``path``."""
        model, metadata = load_model(path, device=select_device(str(device)))
        return cls(model, metadata, device, **kwargs)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        """Theoretical receptive-field radius in pixels."""
        return int(getattr(self.model, "receptive_field", self.metadata.receptive_field))

    @property
    def halo_radius(self) -> int:
        """The default halo in pixels: the measured effective halo if stored, else the receptive field."""
        measured = self.metadata.effective_halo
        return self.receptive_field if measured is None else int(measured)

    def normal_axis(self, ndim: int) -> int | None:
        """The axis 2D models step along (None for 3D models and 2D images)."""
        if self.spec.model_ndim == 3 or ndim == 2:
            return None
        return plane_axes(ndim, self.orientation)[1]

    def halo_per_axis(self, halo: int | Sequence[int], ndim: int) -> tuple[int, ...]:
        """``halo`` per image axis: an integer applies in-plane only for 2D models on volumes (0 along z)."""
        if not isinstance(halo, int | np.integer):
            return per_axis(halo, ndim, "halo")
        normal = self.normal_axis(ndim)
        return tuple(0 if axis == normal else int(halo) for axis in range(ndim))

    def default_halo(self, ndim: int) -> tuple[int, ...]:
        """Default halo per image axis (:attr:`halo_radius`; 0 along the normal axis of 2D models on volumes)."""
        return self.halo_per_axis(self.halo_radius, ndim)

    def align(self, ndim: int) -> tuple[int, ...]:
        """Per image axis, the multiple block inputs must start at: a U-Net's pooling factors, else 1."""
        factors = tuple(getattr(self.model, "pool_factors", ()))
        if not factors:
            return (1,) * ndim
        if self.spec.model_ndim == 3:
            return per_axis(factors, ndim, "pool factors")
        out = [1] * ndim
        plane = (0, 1) if ndim == 2 else plane_axes(ndim, self.orientation)[0]
        for axis, f in zip(plane, factors):
            out[axis] = int(f)
        return tuple(out)

    def bytes_per_pixel(self) -> int:
        """Estimated activation bytes per input pixel of one network input (see :func:`activation_maps`)."""
        itemsize = next((p.element_size() for p in self.model.parameters()), 4)
        return activation_maps(self.model) * max(itemsize, 4)

    def default_block_shape(self, shape: Sequence[int], halo: int | Sequence[int] | None = None) -> tuple[int, ...]:
        """Whole planes up to 1024 x 1024, one slice deep (2D models), or cubes up to 64^3 (3D models),
        shrunk in steps of 64 (16 in 3D) until one input with its halo fits :attr:`memory_budget`."""
        shape = tuple(int(n) for n in shape)
        ndim = len(shape)
        halo = self.default_halo(ndim) if halo is None else self.halo_per_axis(halo, ndim)
        normal = self.normal_axis(ndim)
        axes = [a for a in range(ndim) if a != normal]
        largest, step = (MAX_CUBE, 16) if self.spec.model_ndim == 3 else (MAX_PLANE, 64)

        def cost(side: int) -> int:
            return math.prod(min(shape[a], min(side, shape[a]) + 2 * halo[a]) for a in axes) * self.bytes_per_pixel()

        side = largest
        while side > step and cost(side) > self.memory_budget:
            side -= step
        return tuple(1 if a == normal else min(side, shape[a]) for a in range(ndim))

    def plan(
        self,
        shape: Sequence[int],
        block_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
    ) -> list[Block]:
        """The blocks of an image of ``shape`` (defaults: :meth:`default_block_shape`, :meth:`default_halo`)."""
        shape = tuple(int(n) for n in shape)
        halo = self.default_halo(len(shape)) if halo is None else self.halo_per_axis(halo, len(shape))
        block_shape = self.default_block_shape(shape, halo) if block_shape is None else block_shape
        return plan_blocks(shape, block_shape, halo, self.align(len(shape)))

    def region_block(
        self, shape: Sequence[int], region: Sequence[slice | int], halo: int | Sequence[int] | None = None
    ) -> Block:
        """One block whose output is ``region``, with ``halo`` (default :meth:`default_halo`)."""
        shape = tuple(int(n) for n in shape)
        halo = self.default_halo(len(shape)) if halo is None else self.halo_per_axis(halo, len(shape))
        return make_block(shape, normalize_region(region, shape), halo, self.align(len(shape)))

    # -- reading -------------------------------------------------------------------------------
    def _check(self, shape: Sequence[int]) -> None:
        self.spec.check_image(len(shape))

    def _plane_indices(self, block: Block, normal: int, n: int) -> np.ndarray:
        """Slice indices (items x slices) that the planes of ``block`` read, mirrored into ``[0, n)``."""
        offsets = np.arange(self.spec.slices) - self.spec.slices // 2
        planes = np.arange(block.inp[normal].start, block.inp[normal].stop)
        return mirror(planes[:, None] + offsets[None, :], n)

    def read_box(self, shape: Sequence[int], block: Block) -> Region:
        """The image region read for ``block``: its input region, widened by 2.5D neighbour slices."""
        normal = self.normal_axis(len(shape))
        if normal is None:
            return block.inp
        wanted = self._plane_indices(block, normal, shape[normal])
        box = list(block.inp)
        box[normal] = slice(int(wanted.min()), int(wanted.max()) + 1)
        return tuple(box)

    def _normalise(self, array: Any) -> np.ndarray:
        array = np.asarray(array)
        return self.normalization(array) if self.normalization is not None else array.astype(np.float32)

    def read_block(self, image: Any, block: Block) -> np.ndarray:
        """Normalised network inputs of ``block``: ``(planes, slices, h, w)`` or ``(1, 1, d, h, w)``, and the forest's
        channels after the image's where the model takes them."""
        shape = tuple(image.shape)
        box = self.read_box(shape, block)
        data = self._normalise(image[box])
        normal = self.normal_axis(len(shape))
        if normal is None:
            return self._with_forest(image, data[None, None], [block.inp])
        wanted = self._plane_indices(block, normal, shape[normal]) - box[normal].start
        data = np.take(data, wanted, axis=normal)  # the normal axis becomes (planes, slices)
        data = np.ascontiguousarray(np.moveaxis(data, (normal, normal + 1), (0, 1)))
        zs = range(block.inp[normal].start, block.inp[normal].stop)
        return self._with_forest(image, data, [(slice(z, z + 1), *block.inp[1:]) for z in zs])

    def _with_forest(self, image: Any, x: np.ndarray, boxes: Sequence[tuple[slice, ...]]) -> np.ndarray:
        """Inputs ``x`` ``(items, C, h, w)`` of the xy ``boxes`` of ``image`` with the forest's channels appended."""
        if self.forest is None:
            return x
        channels = np.stack([self.forest.channels(image, box) for box in boxes])
        return np.concatenate([x, channels.astype(x.dtype)], axis=1)

    # -- computing -----------------------------------------------------------------------------
    def _forward(
        self, x: np.ndarray, labels: bool, probabilities: bool, disagreement: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Argmax + 1 labels, softmax probabilities and (an ensemble's, when asked) members' disagreement of a batch
        of inputs ``(N, C, *spatial)``."""
        members = getattr(self.model, "forward_members", None) if disagreement else None
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device)
            if members is not None:
                logits, member_p = members(xt)
                logits = logits.float()
                # (M, N, K, ...) -> (M, K, N, ...): members, then classes, as uncertainty.disagreement takes them
                dis = member_disagreement(np.moveaxis(member_p.float().cpu().numpy(), 1, 2))
            else:
                logits, dis = self.model(xt).float(), None
            p = torch.softmax(logits, dim=1) if probabilities else None
            lab = (logits.argmax(dim=1) + 1).to(torch.int32) if labels else None
            return (
                None if lab is None else lab.cpu().numpy().astype(labels_dtype(self.n_classes)),
                None if p is None else p.cpu().numpy(),
                dis,
            )

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities of a batch of inputs ``(N, C, *spatial)``."""
        probabilities = self._forward(x, False, True)[1]
        assert probabilities is not None  # asked for
        return probabilities

    def _assemble(self, items: np.ndarray, block: Block, ndim: int, channel_axis: bool) -> np.ndarray:
        """Per-input results ``(items, [K,] *plane)`` of ``block`` to its output region ``([K,] *out)``."""
        normal = self.normal_axis(ndim)
        lead = (slice(None),) if channel_axis else ()
        if normal is None:
            return items[(0,) + lead + block.crop]
        plane = tuple(c for axis, c in enumerate(block.crop) if axis != normal)
        items = items[(block.crop[normal],) + lead + plane]
        return np.moveaxis(items, 0, normal + int(channel_axis))

    def _batch_limit(self, x: np.ndarray) -> int:
        pixels = math.prod(x.shape[2:])
        limit = min(self.batch_size, self.memory_budget // max(pixels * self.bytes_per_pixel(), 1))
        if self.device.type == "cpu":  # batching only pays for small inputs on a CPU: bigger ones leave the cache
            limit = min(limit, CPU_BATCH_PIXELS // max(pixels, 1))
        return max(1, limit)

    def _compute(
        self,
        group: list[tuple[Block, np.ndarray]],
        ndim: int,
        labels: bool,
        probabilities: bool,
        disagreement: bool = False,
    ) -> Iterator[BlockDone]:
        """Run the network over a group of blocks whose inputs share one shape; yield them in order."""
        x = np.concatenate([g[1] for g in group]) if len(group) > 1 else group[0][1]
        limit = self._batch_limit(x)
        start = time.perf_counter()
        parts = [self._forward(x[i : i + limit], labels, probabilities, disagreement) for i in range(0, len(x), limit)]
        seconds = (time.perf_counter() - start) / len(x)
        lab = np.concatenate([p[0] for p in parts]) if labels else None
        prob = np.concatenate([p[1] for p in parts]) if probabilities else None
        dis = np.concatenate([p[2] for p in parts]) if parts[0][2] is not None else None
        offset = 0
        for block, xb in group:
            t0, n = time.perf_counter(), len(xb)
            out_l = None if lab is None else self._assemble(lab[offset : offset + n], block, ndim, False)
            out_p = None if prob is None else self._assemble(prob[offset : offset + n], block, ndim, True)
            out_d = None if dis is None else self._assemble(dis[offset : offset + n], block, ndim, False)
            offset += n
            yield BlockDone(block, out_l, out_p, seconds * n + time.perf_counter() - t0, out_d)

    def compute_block(
        self, image: Any, block: Block, *, labels: bool = True, probabilities: bool = True, disagreement: bool = False
    ) -> BlockDone:
        """One block's labels and/or probabilities (and an ensemble's disagreement), exactly as :meth:`blocks` computes
        them (reads only its input)."""
        self._check(image.shape)
        group = [(block, self.read_block(image, block))]
        return next(self._compute(group, len(image.shape), labels, probabilities, disagreement))

    def predict_block(self, image: Any, block: Block) -> np.ndarray:
        """Probabilities ``(K, *block.shape)`` of one block's output region (reads only its input)."""
        probabilities = self.compute_block(image, block, labels=False).probabilities
        assert probabilities is not None  # asked for
        return probabilities

    def predict_region(
        self, image: Any, region: Sequence[slice | int], halo: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """Probabilities ``(K, *region)`` of one region predicted with ``halo`` of context in one block."""
        return self.predict_block(image, self.region_block(image.shape, region, halo))

    def predict(self, image: Any) -> np.ndarray:
        """Probabilities ``(K, *image.shape)`` of a whole (small) image in one pass, the untiled reference;
        2D models on volumes go plane by plane over whole planes, cut as in training (:mod:`napari_msd.base.inputs`)."""
        shape = tuple(image.shape)
        self._check(shape)
        normal = self.normal_axis(len(shape))
        if normal is None:
            whole = tuple(slice(0, n) for n in shape)
            return self._probabilities(self._with_forest(image, self._normalise(image[...])[None, None], [whole]))[0]
        (a, b), _ = plane_axes(len(shape), self.orientation)
        planes = []
        for z in range(shape[normal]):
            center = [0] * len(shape)
            center[normal] = z
            x, box = read_input(image, self.spec, center, (shape[a], shape[b]), self.orientation)
            planes.append(self._with_forest(image, self._normalise(x)[None], [box])[0])
        probs = [
            self._probabilities(np.stack(planes[i : i + self.batch_size]))
            for i in range(0, len(planes), self.batch_size)
        ]
        return np.moveaxis(np.concatenate(probs), 0, normal + 1)

    # -- streaming -----------------------------------------------------------------------------
    def blocks(
        self,
        image: Any,
        block_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] | None = None,
        first: Sequence[slice | int] | None = None,
        skip: Sequence[tuple[int, ...]] = (),
        stop: StopFlag = None,
        *,
        labels: bool = True,
        probabilities: bool = True,
        disagreement: bool = False,
    ) -> Iterator[BlockDone]:
        """Predict ``image`` block by block, yielding :class:`BlockDone` in plan order, or blocks meeting the
        region ``first`` first and the rest nearest-first; ``skip``: block indices already done (resuming);
        ``stop`` (callable or ``threading.Event``) is checked between blocks; ``disagreement``: also the members'
        disagreement of an ensemble (ignored for one network: ``BlockDone.disagreement`` stays None)."""
        shape = tuple(image.shape)
        self._check(shape)
        done = {tuple(i) for i in skip}
        plan = [b for b in order_blocks(self.plan(shape, block_shape, halo), first) if b.index not in done]
        stopped = stopper(stop)
        group: list[tuple[Block, np.ndarray]] = []
        reader = self._prefetch(image, plan, stopped)
        try:
            for block, x in reader:
                if group and x.shape[1:] != group[0][1].shape[1:]:
                    yield from self._emit(group, len(shape), labels, probabilities, stopped, disagreement)
                    group = []
                group.append((block, x))
                if sum(len(g[1]) for g in group) >= self._batch_limit(x):
                    yield from self._emit(group, len(shape), labels, probabilities, stopped, disagreement)
                    group = []
            if group:
                yield from self._emit(group, len(shape), labels, probabilities, stopped, disagreement)
        finally:
            reader.close()  # stops the readers now, also when the caller abandons this generator

    def _emit(
        self,
        group: list[tuple[Block, np.ndarray]],
        ndim: int,
        labels: bool,
        probabilities: bool,
        stopped: Callable[[], bool],
        disagreement: bool = False,
    ) -> Iterator[BlockDone]:
        """Compute a group and yield its blocks, unless stopped (checked before each block)."""
        if stopped():
            return
        for done in self._compute(group, ndim, labels, probabilities, disagreement):
            if stopped():
                return
            yield done

    def _prefetch(
        self, image: Any, plan: list[Block], stopped: Callable[[], bool]
    ) -> Generator[tuple[Block, np.ndarray], None, None]:
        """``(block, inputs)`` in plan order, the next few blocks being read by ``readers`` threads."""
        lookahead = max(2 * self.readers, self.batch_size + self.readers)
        pool = ThreadPoolExecutor(self.readers, thread_name_prefix="napari-msd-read")
        pending: deque = deque()
        blocks = iter(plan)
        try:
            while True:
                while len(pending) < lookahead and (block := next(blocks, None)) is not None:
                    pending.append((block, pool.submit(self.read_block, image, block)))
                if not pending or stopped():
                    return
                block, future = pending.popleft()
                yield block, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def run(
        self, image: Any, labels_out: Any = None, probabilities_out: Any = None, **blocks_kwargs: Any
    ) -> Iterator[BlockDone]:
        """:meth:`blocks`, also writing each finished block into ``labels_out`` (shape of the image) and
        ``probabilities_out`` (``(K, *image.shape)``; uint8 outputs get ``round(p * 255)``, float ones a cast):
        numpy arrays, zarr arrays or any array-like that supports slice assignment."""
        yield from write_blocks(self, image, labels_out, probabilities_out, **blocks_kwargs)
