"""Batch apply: a saved model over a whole volume into a resumable zarr / OME-Zarr output.

:func:`prepare` checks everything (model, input, output) before any work starts; :func:`run`
then yields progress events while blocks are predicted and written, either in this process
(with the predictor's prefetching readers) or as one task per block on a dask.distributed
cluster (a ``LocalCluster``, or a scheduler address), each worker loading the model once.
Every block is written whole and recorded only afterwards, so the same command after a kill
finishes only the missing blocks, and the result equals an uninterrupted run.
:func:`batch_events` does both for a list of inputs (the Batch dock), each into the folder's
:func:`output_name`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NapariMsdError
from ..io.images import ImageReadError, open_image
from ..io.job import PROBABILITY_KINDS, JobSpec
from ..io.model_file import ModelFileError
from ..io.outputs import OUTPUT_SUFFIXES, OutputError, PredictionOutput, create_or_resume, open_output
from .averaging import OrientationAverage
from .predictor import BlockDone, Predictor
from .sinks import BlockSink, stream
from .tiling import make_block

_STRIPPED = (".ome.zarr", ".ome.tiff", ".ome.tif")  # double suffixes that output_name drops whole


class BatchError(NapariMsdError):
    """A batch job that cannot run as asked; one line saying what to do."""


@dataclass(frozen=True)
class BatchStarted:
    n_blocks: int
    n_done: int  # blocks already finished by an earlier run of the same job
    output: str
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    where: str  # "this process" or the dask scheduler's address


@dataclass(frozen=True)
class BlockWritten:
    index: tuple[int, ...]
    n_done: int
    n_blocks: int


@dataclass(frozen=True)
class BatchFinished:
    n_blocks: int
    n_computed: int
    elapsed: float
    output: str


@dataclass(frozen=True)
class Prepared:
    """Every input of :func:`batch_events` checked and its output created or resumed: ``(n_blocks, n_done)``
    and the output path per input."""

    blocks: tuple[tuple[int, int], ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class InputEvent:
    """An event of :func:`run` on input ``index`` of :func:`batch_events`."""

    index: int
    event: BatchStarted | BlockWritten | BatchFinished


@dataclass
class Job:
    """A checked batch job: the predictor, the lazily opened input and the output store."""

    model_path: str
    image_spec: str
    predictor: Predictor | OrientationAverage
    image: Any
    spec: JobSpec
    output: PredictionOutput
    device: str


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def output_format(path: str | os.PathLike[str], requested: str | None = None) -> str:
    """``ome-zarr`` for ``*.ome.zarr`` paths (or when asked), else plain ``zarr``."""
    if requested:
        return requested
    return "ome-zarr" if str(path).rstrip("/").lower().endswith(".ome.zarr") else "zarr"


def prepare(
    model_path: str | os.PathLike[str],
    image_spec: str,
    output_path: str | os.PathLike[str],
    *,
    probabilities: str = "none",
    labels: bool = True,
    tile_size: int | None = None,
    halo: int | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    batch_size: int = 4,
    average_orientations: bool = False,
) -> Job:
    """Open and check model, input and output; create the output or resume the same job in it."""
    if probabilities not in PROBABILITY_KINDS:
        raise BatchError(f"--probabilities takes {', '.join(PROBABILITY_KINDS)}, got {probabilities!r}")
    if tile_size is not None and tile_size < 1:
        raise BatchError(f"the tile size must be a positive number of pixels, got {tile_size}")
    if halo is not None and halo < 0:
        raise BatchError(f"the halo must be >= 0 pixels, got {halo}")
    model_path = os.path.abspath(os.fspath(model_path))  # workers and later runs may start elsewhere
    image_spec = _absolute_spec(str(image_spec))
    output_path = os.path.abspath(os.fspath(output_path))
    _refuse_overlap(image_spec, output_path)
    try:
        single = Predictor.from_file(model_path, device=device, batch_size=batch_size)
    except (ModelFileError, ValueError) as err:
        raise BatchError(str(err)) from None
    try:
        image = open_image(image_spec)
    except ImageReadError as err:
        raise BatchError(str(err)) from None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 2 and single.spec.mode != "2d":
        raise BatchError(
            f"{image_spec} is 2D but the model was trained on {single.spec.mode} input; "
            "give it a ZYX volume or use a 2D model"
        )
    try:
        single.spec.check_image(len(shape), image_spec)
    except ValueError as err:
        raise BatchError(str(err)) from None
    predictor: Predictor | OrientationAverage = single
    if average_orientations:
        if len(shape) != 3 or single.spec.model_ndim != 2:
            raise BatchError("averaging xy, xz and yz predictions needs a 2D model and a ZYX volume")
        predictor = OrientationAverage(single)
    ndim = len(shape)
    halo_axes = predictor.default_halo(ndim) if halo is None else predictor.halo_per_axis(int(halo), ndim)
    if tile_size is None:
        block_shape = predictor.default_block_shape(shape, halo_axes)
    else:
        normal = predictor.normal_axis(ndim)
        block_shape = tuple(1 if axis == normal else min(int(tile_size), n) for axis, n in enumerate(shape))
    meta = predictor.metadata
    job = JobSpec(
        model_sha256=file_sha256(model_path),
        input=str(image_spec),
        input_shape=shape,
        block_shape=block_shape,
        n_classes=predictor.n_classes,
        halo=halo_axes,
        class_names=list(meta.class_names),
        class_colors=list(meta.class_colors),
        probabilities=probabilities,
        labels=labels,
        output_format=output_format(output_path, fmt),
        options={"average_orientations": True} if average_orientations else {},
    )
    try:
        output = create_or_resume(output_path, job, overwrite=overwrite)
    except OutputError as err:
        raise BatchError(str(err)) from None
    return Job(model_path, str(image_spec), predictor, image, job, output, device)


def output_name(image_spec: str, ome_zarr: bool = False) -> str:
    """``<stem>_prediction.msd.zarr`` (``.msd.ome.zarr``) for an input: ``x.tif`` and ``x.ome.zarr`` give ``x``,
    ``a.zarr::raw/s0`` gives ``a_raw_s0`` (arrays of one store get distinct outputs)."""
    path, _, inner = str(image_spec).partition("::")
    name = Path(path.rstrip("/\\")).name
    stripped = next((name[: -len(s)] for s in _STRIPPED if name.lower().endswith(s)), None)
    stem = stripped if stripped is not None else (Path(name).stem if Path(name).suffix else name)
    stem = "_".join([p for p in (stem, *inner.replace("\\", "/").split("/")) if p]) or "input"
    return f"{stem}_prediction{OUTPUT_SUFFIXES[1] if ome_zarr else OUTPUT_SUFFIXES[0]}"  # napari opens them with us


def batch_events(
    model_path: str | os.PathLike[str],
    inputs: Sequence[str],
    outputs: Sequence[str | os.PathLike[str]],
    options: Mapping[str, Any],
    stop: Any = None,
) -> Iterator[Prepared | InputEvent]:
    """Predict several inputs, each into its output: :func:`prepare` all first (``options`` are its keywords),
    so a bad one fails before any work, then :func:`run` them in turn. Yields :class:`Prepared`, then an
    :class:`InputEvent` per event of :func:`run`; ``stop`` (an Event) ends it between inputs and blocks."""
    prepared: list[Job] = []
    for spec, out in zip(inputs, outputs):
        if stop is not None and stop.is_set():
            return
        prepared.append(prepare(model_path, spec, out, **options))
    yield Prepared(
        tuple((j.spec.n_blocks, len(j.output.done())) for j in prepared),
        tuple(str(j.output.path) for j in prepared),
    )
    jobs: list[Job | None] = list(prepared)
    del prepared
    for i, job in enumerate(jobs):
        jobs[i] = None  # drop each predictor once its input is done
        if stop is not None and stop.is_set():
            return
        assert job is not None
        for event in run(job, stop=stop):
            yield InputEvent(i, event)


def _absolute_spec(spec: str) -> str:
    """``spec`` with an absolute path (the ``::array`` part of zarr specs kept)."""
    path, sep, inner = spec.partition("::")
    return os.path.abspath(os.path.expanduser(path)) + sep + inner


def _refuse_overlap(image_spec: str, output_path: str) -> None:
    """Refuse an output that is, contains or lies inside the input: --overwrite would delete the input."""
    inp = Path(image_spec.partition("::")[0]).resolve()
    out = Path(output_path).resolve()
    if inp == out or out in inp.parents or inp in out.parents:
        raise BatchError(f"{output_path} overlaps the input {image_spec}; choose an output outside the input")


def run(job: Job, *, scheduler: str | None = None, workers: int = 2, stop: Any = None) -> Iterator[Any]:
    """Predict the missing blocks of ``job``, yielding :class:`BatchStarted`, :class:`BlockWritten` per block
    and :class:`BatchFinished`; OME-Zarr outputs get their pyramid once every block is written.

    ``scheduler``: None (this process), ``"local"`` (a dask ``LocalCluster`` of ``workers`` processes) or the
    address of a running dask scheduler (``tcp://host:8786``). ``stop`` (callable or Event) ends the run
    between blocks; the output then resumes later.
    """
    spec = job.spec
    n_blocks = spec.n_blocks
    done = job.output.done()
    start = time.perf_counter()
    where = "this process" if scheduler is None else scheduler
    halo = spec.halo if isinstance(spec.halo, tuple) else (spec.halo,) * len(spec.block_shape)  # a tuple once checked
    yield BatchStarted(n_blocks, len(done), str(job.output.path), spec.block_shape, halo, where)
    count, computed = len(done), 0
    blocks = (
        _local_blocks(job, done, stop)
        if scheduler is None
        else _distributed_blocks(job, done, scheduler, workers, stop)
    )
    for index in blocks:
        count += 1
        computed += 1
        yield BlockWritten(index, count, n_blocks)
    if job.output.is_complete(n_blocks) and spec.output_format == "ome-zarr" and not job.output.finalized:
        job.output.finalize()
    yield BatchFinished(n_blocks, computed, time.perf_counter() - start, str(job.output.path))


def _local_blocks(job: Job, done: set, stop: Any) -> Iterator[tuple[int, ...]]:
    spec = job.spec
    for result in stream(
        job.predictor,
        job.image,
        [into_output(job.output)],
        block_shape=spec.block_shape,
        halo=spec.halo,
        skip=done,
        stop=stop,
        labels=spec.labels,
        probabilities=spec.probabilities != "none",
    ):
        yield result.block.index


def _distributed_blocks(job: Job, done: set, scheduler: str, workers: int, stop: Any) -> Iterator[tuple[int, ...]]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BatchError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as err:
            raise BatchError(f"cannot reach the dask scheduler at {scheduler} ({err}); check the address") from None
    spec = job.spec
    missing = [index for index in job.output.missing() if index not in done]
    try:
        futures = [
            client.submit(
                predict_and_write_block,
                job.model_path,
                spec.model_sha256,
                job.image_spec,
                str(job.output.path),
                index,
                job.device,
                pure=False,
            )
            for index in missing
        ]
        for future in as_completed(futures):
            if stop is not None and (stop() if callable(stop) else stop.is_set()):
                client.cancel(futures)
                return
            yield tuple(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@functools.lru_cache(maxsize=4)
def _worker_predictor(model_path: str, digest: str, device: str, average: bool) -> Predictor | OrientationAverage:
    """One predictor per worker process and model (``digest`` keys the cache to the file's content)."""
    del digest
    predictor = Predictor.from_file(model_path, device=device, readers=1)
    return OrientationAverage(predictor) if average else predictor


@functools.lru_cache(maxsize=4)
def _worker_image(image_spec: str) -> Any:
    return open_image(image_spec)


@functools.lru_cache(maxsize=4)
def _worker_output(output_path: str) -> PredictionOutput:
    return open_output(output_path)


def predict_and_write_block(
    model_path: str, digest: str, image_spec: str, output_path: str, index: tuple[int, ...], device: str = "cpu"
) -> tuple[int, ...]:
    """The task a dask worker runs: predict one block of the job stored at ``output_path`` and write it."""
    output = _worker_output(output_path)
    spec = output.job
    predictor = _worker_predictor(model_path, digest, device, bool(spec.options.get("average_orientations")))
    image = _worker_image(image_spec)
    block = make_block(
        spec.input_shape,
        spec.block_slices(tuple(index)),
        spec.halo,
        predictor.align(len(spec.input_shape)),
        index=tuple(index),
    )
    into_output(output)(
        predictor.compute_block(image, block, labels=spec.labels, probabilities=spec.probabilities != "none")
    )
    return tuple(index)


def into_output(output: PredictionOutput) -> BlockSink:
    """A sink (:mod:`.sinks`) writing each block into a job's output store, which records it as done."""

    def write(done: BlockDone) -> None:
        output.write_block(done.block.index, done.block.out, done.labels, done.probabilities)

    return write
