"""Prediction outputs: resumable, block-wise written zarr v3 / OME-Zarr 0.5 stores (no napari, no Qt).

A prediction job writes, for a YX or ZYX input, the class **labels** (argmax, 1..K as in napari Labels
layers; uint8 when K < 256, else uint16) and/or the class **probabilities** ((K, *shape); uint8 scaled
0..255 or float16), one block at a time. Blocks tile the input on a grid of ``job.block_shape`` and are
exactly the chunks of the level-0 arrays, so processes or dask workers writing different blocks never
touch the same file.

Layout, format ``"zarr"`` (a plain zarr v3 group)::

    out.zarr/zarr.json      group; attributes["napari_msd"] = {"layout", "job", "finalized", "levels"}
    out.zarr/labels         (Z, Y, X) uint8/uint16, chunks = block
    out.zarr/probabilities  (K, Z, Y, X) uint8/float16, chunks = (1, *block): one class per chunk
    out.zarr/blocks_done    uint8, one element (and one chunk file, ``c.i.j.k``) per block

Layout, format ``"ome-zarr"`` (OME-Zarr 0.5 on zarr v3, metadata written with ome-zarr-py)::

    out.ome.zarr/zarr.json            image group: ome.multiscales (axes c, z, y, x), ome.omero (class
                                      names and colours per channel), napari_msd record
    out.ome.zarr/s0, s1, ...          probabilities pyramid (s1... added by finalize(): 2x mean)
    out.ome.zarr/labels/zarr.json     ome.labels = ["prediction"]
    out.ome.zarr/labels/prediction/   label image: ome.multiscales + ome.image-label (colors, properties
                                      {"label-value": i, "class": name}, source ../../); s0, s1, ... (2x stride)
    out.ome.zarr/blocks_done          as above

Without probabilities there is no intensity image to hang ``labels/`` from, so the root group is the
label image itself (multiscales + image-label at the root).

Resume: the job (:class:`JobSpec`) is stored in the root attributes. :func:`create_or_resume` reopens
a store that holds the same job and refuses anything else (``overwrite=True`` replaces only earlier
napari-msd outputs, never files or foreign data). :meth:`PredictionOutput.write_block` writes a block's
data and only then sets that block's element of ``blocks_done``; zarr writes every chunk file through a
temporary file and a rename, so a killed job leaves each block either recorded with all its data or not
recorded (a half-written block is simply written again). This protects against killed processes, not
power loss (nothing is fsynced).

The job itself is defined in :mod:`.job`, the OME-NGFF metadata written in :mod:`.ome` and the pyramid
built in :mod:`.pyramid`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..base.quantise import quantise
from ..errors import NapariMsdError, one_line
from .job import JobSpec, job_difference, spatial_names
from .ome import LABELS_NAME, create_ome
from .pyramid import build_pyramid

LAYOUT_VERSION = 1
ATTRS_KEY = "napari_msd"
DONE_ARRAY = "blocks_done"
# Recommended output names: napari opens folders named so with napari-msd's reader without asking which reader
# to use (napari_msd._reader adds the reader preference); any other name is still a valid output.
OUTPUT_SUFFIXES = (".msd.zarr", ".msd.ome.zarr")
_OVERWRITE_HINT = "pass --overwrite to replace it or choose another output"


class OutputError(NapariMsdError):
    """A prediction output cannot be created, reopened or finalized; one line naming the path and what to do."""


class PredictionOutput:
    """An open prediction store: writable level-0 arrays, the done-block record and the pyramid.

    ``labels`` / ``probabilities`` are the writable zarr arrays (``None`` when the job does not write
    them). Pickling reopens the store by path (:func:`open_output`), so one object can be handed to
    worker processes or dask tasks.
    """

    def __init__(self, path: Path, root: Any, job: JobSpec, record: dict[str, Any]) -> None:
        self.path = path
        self.job = job
        self._root = root
        self._record = record
        self._labels_group, self._probabilities_group = _group_paths(job)
        self.labels = (
            root[f"{self._labels_group}s0" if job.output_format == "ome-zarr" else "labels"] if job.labels else None
        )
        self.probabilities = (
            root[f"{self._probabilities_group}s0" if job.output_format == "ome-zarr" else "probabilities"]
            if job.probabilities != "none"
            else None
        )
        self._done = root[DONE_ARRAY]

    def __repr__(self) -> str:
        return f"PredictionOutput({str(self.path)!r}, format={self.job.output_format!r}, grid={self.job.grid})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_output, (str(self.path),))

    # -- writing ---------------------------------------------------------------------------------------------------

    def write_block(
        self,
        block_index: tuple[int, ...],
        out_slices: tuple[slice, ...] | None = None,
        labels: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
    ) -> None:
        """Write one whole block, then record it as done.

        ``out_slices`` must be the block's region (:meth:`JobSpec.block_slices`; ``None`` derives it).
        Every output the job writes must be given: ``labels`` as integers 0..K of the block's shape,
        ``probabilities`` as (K, *block) floats in [0, 1] (scaled to 0..255 for uint8 outputs) or already
        in the stored dtype. If anything raises, the block is not recorded.
        """
        job = self.job
        index = tuple(int(i) for i in block_index)
        region = job.block_slices(index)
        if out_slices is not None and _normalise_slices(out_slices, job.input_shape) != region:
            raise ValueError(f"block {index} covers {_fmt_slices(region)}, got out_slices {_fmt_slices(out_slices)}")
        shape = tuple(s.stop - s.start for s in region)
        if (labels is None) == job.labels or (probabilities is None) == (job.probabilities != "none"):
            outputs = (("labels", job.labels), ("probabilities", job.probabilities != "none"))
            wanted = " and ".join(name for name, on in outputs if on)
            raise ValueError(f"this job writes {wanted}; give exactly those to write_block")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != shape or labels.dtype.kind not in "biu":
                raise ValueError(
                    f"labels for block {index} must be integers of shape {shape}, got {labels.dtype} {labels.shape}"
                )
            if labels.size and (labels.min() < 0 or labels.max() > job.n_classes):
                raise ValueError(
                    f"labels for block {index} must lie in 0..{job.n_classes}, got {labels.min()}..{labels.max()}"
                )
            labels = labels.astype(job.labels_dtype, copy=False)
        if probabilities is not None:
            probabilities = _to_stored_probabilities(np.asarray(probabilities), job, index, shape)
        try:
            if labels is not None:
                assert self.labels is not None  # the job writes labels (checked above)
                self.labels[region] = labels
            if probabilities is not None:
                assert self.probabilities is not None  # the job writes probabilities (checked above)
                self.probabilities[(slice(None), *region)] = probabilities
            self._done[index] = 1  # one chunk per block, written atomically by zarr, only after the data
        except OSError as err:
            raise OutputError(
                f"cannot write block {index} to {self.path} ({one_line(err)}); free disk space or "
                "fix permissions, then resume the prediction"
            ) from None

    def _check_arrays(self) -> None:
        """Refuse a store whose arrays do not match its job (edited or damaged)."""
        job = self.job
        expected: list[tuple[Any, tuple[int, ...], np.dtype | None, tuple[int, ...]]] = [
            (self._done, job.grid, np.dtype(np.uint8), (1,) * job.ndim)
        ]
        if self.labels is not None:
            expected.append((self.labels, job.input_shape, job.labels_dtype, job.block_shape))
        if self.probabilities is not None:
            expected.append(
                (self.probabilities, (job.n_classes, *job.input_shape), job.probabilities_dtype, (1, *job.block_shape))
            )
        for arr, shape, dtype, chunks in expected:
            found = (tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks))
            if found != (shape, dtype, chunks):
                raise OutputError(
                    f"{self.path} is a damaged prediction output (array {arr.path} has shape {found[0]}, "
                    f"{found[1]}, chunks {found[2]}; its job needs {shape}, {dtype}, chunks {chunks}); "
                    f"{_OVERWRITE_HINT}"
                )

    # -- state -----------------------------------------------------------------------------------------------------

    def done(self) -> set[tuple[int, ...]]:
        """Indices of the blocks recorded as fully written."""
        directory = self.path / DONE_ARRAY
        try:
            names = os.listdir(directory)
        except OSError:
            names = None
        if names is None:  # not a plain directory store: read the record
            return {tuple(int(i) for i in idx) for idx in np.argwhere(self._done[...] != 0)}
        grid, found = self.job.grid, set()
        for name in names:
            parts = name.split(".")
            if len(parts) == self.job.ndim + 1 and parts[0] == "c" and all(p.isdigit() for p in parts[1:]):
                index = tuple(int(p) for p in parts[1:])
                if all(i < n for i, n in zip(index, grid)):
                    found.add(index)
        return found

    def missing(self) -> list[tuple[int, ...]]:
        """Indices of the blocks still to write, in C order."""
        done = self.done()
        return [idx for idx in np.ndindex(*self.job.grid) if idx not in done]

    def is_complete(self, n_blocks: int | None = None) -> bool:
        """Whether every block (``n_blocks``, default the whole grid) is recorded as done."""
        return len(self.done()) >= (self.job.n_blocks if n_blocks is None else int(n_blocks))

    @property
    def finalized(self) -> bool:
        """Whether :meth:`finalize` completed (re-read from disk)."""
        return bool(_read_record(self.path).get("finalized", False))

    # -- finishing -------------------------------------------------------------------------------------------------

    def finalize(self, *, downsample_z: bool = True, max_levels: int = 8) -> None:
        """Record completion; for OME-Zarr first build the multiscale pyramid from level 0.

        Each level halves every spatial axis longer than one pixel (z only when ``downsample_z``; keep
        it false for anisotropic serial sections) until the level fits in one block, at most
        ``max_levels`` levels. Labels take every second pixel (nearest, no mode), probabilities the mean
        of each 2x(2x)2 cell (edges replicated). Levels are computed with dask from the level below, one
        output chunk per task, so memory stays at a few blocks per worker; an active dask client is used.
        Raises :class:`OutputError` while blocks are missing.
        """
        missing = self.job.n_blocks - len(self.done())
        if missing:
            raise OutputError(
                f"{self.path}: {missing} of {self.job.n_blocks} blocks are not written yet; "
                "resume the prediction before finalizing"
            )
        levels = 1
        try:
            if self.job.output_format == "ome-zarr":
                levels = build_pyramid(
                    self._root,
                    self.job,
                    self._labels_group,
                    self._probabilities_group,
                    downsample_z=downsample_z,
                    max_levels=max(1, int(max_levels)),
                )
            self._root = _open_root(self.path, "r+")
            record = {**dict(self._root.attrs).get(ATTRS_KEY, {}), "finalized": True, "levels": levels}
            self._root.attrs[ATTRS_KEY] = record
            self._record = record
        except OSError as err:
            raise OutputError(
                f"cannot finalize {self.path} ({one_line(err)}); check the disk and permissions"
            ) from None

    # -- reading ---------------------------------------------------------------------------------------------------

    def open_labels(self, *, multiscale: bool = False) -> Any:
        """The labels, read-only and lazy: a zarr array, or the list of pyramid levels (largest first)."""
        if not self.job.labels:
            raise OutputError(
                f"{self.path} holds no labels (the job wrote probabilities only); open the probabilities instead"
            )
        return self._open_levels(self._labels_group, "labels", multiscale)

    def open_probabilities(self, *, multiscale: bool = False) -> Any:
        """The (K, *shape) probabilities, read-only and lazy: a zarr array, or the list of pyramid levels."""
        if self.job.probabilities == "none":
            raise OutputError(
                f"{self.path} holds no probabilities (the job wrote labels only); rerun the "
                "prediction with probabilities to get them"
            )
        return self._open_levels(self._probabilities_group, "probabilities", multiscale)

    def _open_levels(self, group_path: str, plain_name: str, multiscale: bool) -> Any:
        root = _open_root(self.path, "r")
        if self.job.output_format == "zarr":
            arr = root[plain_name]
            return [arr] if multiscale else arr
        group = root[group_path.rstrip("/")] if group_path else root
        paths = [d["path"] for d in dict(group.attrs)["ome"]["multiscales"][0]["datasets"]]
        return [group[p] for p in paths] if multiscale else group[paths[0]]


# -- opening and creating ----------------------------------------------------------------------------------------------


def create_or_resume(path: str | os.PathLike[str], job: JobSpec, *, overwrite: bool = False) -> PredictionOutput:
    """Create the output store for ``job`` at ``path``, or reopen it when it already holds the same job.

    Anything else at ``path`` raises :class:`OutputError` and is left untouched. With ``overwrite`` an
    earlier napari-msd prediction output (another job) is deleted and recreated; files, foreign zarr stores
    and other directories are never deleted, not even with ``overwrite``. An empty directory is used as is, and
    a napari-msd store whose creation was cut short (no job recorded, no block done) is recreated.
    Call this once (in the driver), then hand the returned object, which pickles, to the workers.
    """
    if not isinstance(job, JobSpec):
        raise TypeError(f"job must be a JobSpec, got {type(job).__name__}")
    path = Path(os.path.expanduser(os.fspath(path)))
    kind, detail = _inspect(path)
    if kind == "file":
        raise OutputError(
            f"{path} is a file, not a prediction output; choose another output (napari-msd never "
            "replaces files, not even with --overwrite)"
        )
    if kind == "foreign":
        raise OutputError(
            f"{path} exists and is not a napari-msd prediction output ({detail}); choose another "
            "output or remove it yourself (--overwrite only replaces napari-msd outputs)"
        )
    if kind == "ours":
        record = _read_record(path)
        stored = record.get("job")
        damaged = None
        if stored == job.to_dict():
            _check_writable(path)
            try:
                out = _open_existing(path, "r+", stored)
                out._check_arrays()
                return out
            except OutputError as err:
                damaged = err  # the same job, but the store no longer matches it
        started_only = stored is None and not _done_files(path)  # creation was cut short: nothing to keep
        if damaged is not None and not overwrite:
            raise damaged
        if not started_only and not overwrite:
            why = job_difference(stored, job.to_dict())
            raise OutputError(f"{path} exists and holds a different prediction ({why}); {_OVERWRITE_HINT}")
        if path.is_symlink():
            raise OutputError(f"{path} is a symbolic link; remove it yourself or choose another output")
        try:
            shutil.rmtree(path)
        except OSError as err:
            raise OutputError(
                f"cannot remove the old prediction at {path} ({one_line(err)}); remove it yourself "
                "or choose another output"
            ) from None
    return _create(path, job)


def open_output(path: str | os.PathLike[str], *, writable: bool = True) -> PredictionOutput:
    """Reopen an existing prediction output (e.g. in a worker, or for viewing) with the job stored in it."""
    path = Path(os.path.expanduser(os.fspath(path)))
    kind, detail = _inspect(path)
    if kind != "ours":
        what = {"missing": "does not exist", "file": "is a file", "empty": "is an empty directory"}.get(
            kind, f"is not a napari-msd prediction output ({detail})"
        )
        raise OutputError(f"{path} {what}; give the output path of a napari-msd prediction")
    stored = _read_record(path).get("job")
    if stored is None:
        raise OutputError(
            f"{path} is an unfinished napari-msd output (its creation was interrupted); run the "
            "prediction again to recreate it"
        )
    out = _open_existing(path, "r+" if writable else "r", stored)
    out._check_arrays()
    return out


def _open_existing(path: Path, mode: Literal["r", "r+"], stored: dict[str, Any]) -> PredictionOutput:
    try:
        job = JobSpec.from_dict(stored)
    except (TypeError, ValueError) as err:
        raise OutputError(f"{path} has an unreadable job record ({one_line(err)}); {_OVERWRITE_HINT}") from None
    try:
        root = _open_root(path, mode)
        return PredictionOutput(path, root, job, _read_record(path))
    except (KeyError, OSError, ValueError) as err:
        raise OutputError(f"{path} is a damaged prediction output ({one_line(err)}); {_OVERWRITE_HINT}") from None


def _open_root(path: Path, mode: Literal["r", "r+"]) -> Any:
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=3)


def _create(path: Path, job: JobSpec) -> PredictionOutput:
    import zarr

    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create {path}: a file is in the way; choose another output") from None
    except NotADirectoryError:
        raise OutputError(
            f"cannot create {path}: a parent of it is a file, not a directory; choose an output inside a directory"
        ) from None
    except PermissionError:
        raise OutputError(f"cannot create {path}: permission denied; choose a writable location") from None
    except OSError as err:
        raise OutputError(f"cannot create {path} ({one_line(err)}); choose another output") from None
    _check_writable(path)
    try:
        root = zarr.open_group(
            str(path), mode="w-", zarr_format=3, attributes={ATTRS_KEY: {"layout": LAYOUT_VERSION, "job": None}}
        )
        if job.output_format == "zarr":
            _create_plain(root, job)
        else:
            create_ome(root, job)
        root.create_array(
            DONE_ARRAY,
            shape=job.grid,
            chunks=(1,) * job.ndim,
            dtype="uint8",
            fill_value=0,
            compressors=None,
            chunk_key_encoding={"name": "default", "separator": "."},
            dimension_names=spatial_names(job),
            attributes={"description": "napari-msd: 1 where the block's data is fully written"},
        )
        record: dict[str, Any] = {"layout": LAYOUT_VERSION, "job": job.to_dict(), "finalized": False, "levels": 1}
        root.attrs[ATTRS_KEY] = record  # the commit point: a store without a job can be recreated freely
    except PermissionError:
        raise OutputError(f"cannot write to {path}: permission denied; choose a writable location") from None
    except OSError as err:
        raise OutputError(f"cannot create {path} ({one_line(err)}); check the disk or choose another output") from None
    return PredictionOutput(path, root, job, record)


def _create_plain(root: Any, job: JobSpec) -> None:
    names = spatial_names(job)
    if job.labels:
        root.create_array(
            "labels",
            shape=job.input_shape,
            chunks=job.block_shape,
            dtype=job.labels_dtype,
            fill_value=0,
            dimension_names=names,
            attributes={"class_names": job.class_names, "class_colors": job.class_colors},
        )
    if job.probabilities != "none":
        root.create_array(
            "probabilities",
            shape=(job.n_classes, *job.input_shape),
            chunks=(1, *job.block_shape),
            dtype=job.probabilities_dtype,
            fill_value=0,
            dimension_names=("c", *names),
            attributes={"class_names": job.class_names, "scale": _prob_scale(job)},
        )


# -- helpers -----------------------------------------------------------------------------------------------------------


def _inspect(path: Path) -> tuple[str, str]:
    """Classify ``path``: missing, file, empty, ours (a napari-msd output) or foreign (with a description)."""
    if not path.exists():
        return ("missing", "") if not path.is_symlink() else ("foreign", "a broken symbolic link")
    if not path.is_dir():
        return "file", ""
    try:
        entries = os.listdir(path)
    except OSError as err:
        raise OutputError(
            f"cannot read {path} ({one_line(err)}); check its permissions or choose another output"
        ) from None
    if not entries:
        return "empty", ""
    meta = _read_json(path / "zarr.json")
    if isinstance(meta, dict) and isinstance(meta.get("attributes"), dict):
        record = meta["attributes"].get(ATTRS_KEY)
        if isinstance(record, dict) and "layout" in record:
            return "ours", ""
    if meta is not None or any((path / m).exists() for m in (".zarray", ".zgroup")):
        ome = isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) and "ome" in meta["attributes"]
        return "foreign", "an OME-Zarr image" if ome else "a zarr store"
    return "foreign", f"a directory with {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"


def _normalise_slices(slices: Any, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Plain ``start:stop`` slices clipped to ``shape``; ``None`` when ``slices`` is not one step-1 slice per axis."""
    if not isinstance(slices, tuple | list) or len(slices) != len(shape):
        return None
    if not all(isinstance(s, slice) for s in slices):
        return None
    bounds = [s.indices(n) for s, n in zip(slices, shape)]
    if any(step != 1 for _, _, step in bounds):
        return None
    return tuple(slice(start, stop) for start, stop, _ in bounds)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_record(path: Path) -> dict[str, Any]:
    meta = _read_json(path / "zarr.json")
    record = meta.get("attributes", {}).get(ATTRS_KEY) if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else {}


def _done_files(path: Path) -> bool:
    try:
        return any(n.startswith("c.") for n in os.listdir(path / DONE_ARRAY))
    except OSError:
        return False


def _check_writable(path: Path) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {path}: permission denied; choose a writable location")


def _group_paths(job: JobSpec) -> tuple[str, str]:
    """Group prefixes (``""`` = root, else ending in ``/``) of the labels and probabilities pyramids."""
    if job.output_format == "zarr":
        return "", ""
    return (f"labels/{LABELS_NAME}/" if job.probabilities != "none" else ""), ""


def _to_stored_probabilities(p: np.ndarray, job: JobSpec, index: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    want = (job.n_classes, *shape)
    if p.shape != want:
        raise ValueError(f"probabilities for block {index} must have shape {want}, got {p.shape}")
    target = job.probabilities_dtype
    if p.dtype == target:
        return p
    if p.dtype.kind != "f":
        raise ValueError(f"probabilities for block {index} must be floats in [0, 1] or {target}, got {p.dtype}")
    return quantise(p, target)


def _prob_scale(job: JobSpec) -> str:
    return "probability = value / 255" if job.probabilities == "uint8" else "probability = value"


def _fmt_slices(slices: Any) -> str:
    try:
        return "[" + ", ".join(f"{s.start}:{s.stop}" for s in slices) + "]"
    except (AttributeError, TypeError):
        return repr(slices)
