"""Lazy image readers: TIFF, zarr / OME-Zarr, MRC and ``.npy`` as 2D (YX) or 3D (ZYX) arrays.

:func:`open_image` takes one *spec* and returns a :class:`LazyArray`: opening reads metadata only,
and each slice reads just the pixels it covers and returns an independent numpy array. Specs:

* ``cells.tif`` / ``.tiff``: a memory map when the first series is stored uncompressed and
  contiguously, else chunked reads through tifffile's zarr store (compressed files, one chunk per
  page or strip group, zarr 3 works). Only when neither works is the file read whole, and only up
  to :data:`MAX_EAGER_TIFF_BYTES`; larger files must be converted to zarr first.
* ``vol.zarr`` or ``vol.zarr/group/array``: a zarr (v2 or v3) array.
* ``vol.zarr::group/array``: an array inside a group; ``::`` (:data:`ZARR_SEPARATOR`) separates the
  store from the array path. A group named without an array path opens its full-resolution
  dataset when it is OME-Zarr (``multiscales``, v0.4 or v0.5), else the error lists its arrays.
* ``tomo.mrc`` / ``.rec`` / ``.st`` / ``.map`` / ``.ali`` / ``.mrcs``: a memory map via mrcfile.
* ``stack.npy``: a memory map via :func:`numpy.load`.

Images must be numeric and YX or ZYX. Beyond three axes, size-1 axes other than Y and X are dropped
lazily, leftmost first (OME-Zarr's TCZYX with one time point and one channel becomes ZYX; a
(1, Y, X) array stays a one-slice volume); colour (RGB/RGBA), multi-channel, time-lapse and other
true 4D+ data are refused. A TIFF tagged planar RGB (samples first, SYX) is read as slices (ZYX), as
napari shows it, with a logged warning; interleaved RGB(A) (YXS) is refused. Every failure to open
raises :class:`ImageReadError` with one line naming the spec and what to do. No napari, no Qt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NapariMsdError, one_line

ZARR_SEPARATOR = "::"
MAX_EAGER_TIFF_BYTES = 2 * 1024**3
TIFF_SUFFIXES = (".tif", ".tiff")
MRC_SUFFIXES = (".mrc", ".rec", ".st", ".map", ".ali", ".mrcs")
NPY_SUFFIXES = (".npy",)
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_SUPPORTED = "TIFF, zarr / OME-Zarr (vol.zarr::array), MRC (.mrc .rec .st .map .ali .mrcs) or .npy"
_DIMS = "napari-msd reads grey-scale 2D (YX) or 3D (ZYX) images"
_log = logging.getLogger(__name__)
# tifffile log messages that mean the file is cut short or damaged (it logs them instead of raising)
_TIFF_CORRUPT_LOGS = ("invalid page offset", "failed to reshape", "truncated", "corrupt")


class ImageReadError(NapariMsdError):
    """An image cannot be opened; the message is one line naming the spec and what to do."""


class LazyArray:
    """Read-only, lazily read 2D/3D image: ``shape``, ``dtype``, ``ndim``, ``chunks`` and numpy-style slicing.

    Slicing (integers, slices, ``...``; arrays where the source supports them) reads only the
    selected pixels and returns a new, writable numpy array in native byte order. ``np.asarray``
    reads everything. ``source`` is the underlying array (numpy memmap, zarr array or ndarray);
    ``drop_axes`` are its size-1 axes hidden from :attr:`shape`. Pickling reopens ``spec``.
    """

    def __init__(
        self,
        source: Any,
        *,
        format: str,
        spec: str,
        drop_axes: tuple[int, ...] = (),
        chunks: tuple[int, ...] | None = None,
        keepalive: Any = None,
    ) -> None:
        self.source = source
        self.format = format
        self.spec = spec
        self.drop_axes = tuple(drop_axes)
        keep = [i for i in range(len(source.shape)) if i not in self.drop_axes]
        self._keep = keep
        self._shape = tuple(int(source.shape[i]) for i in keep)
        self._dtype = np.dtype(source.dtype).newbyteorder("=")
        self._chunks = None if chunks is None else tuple(int(chunks[i]) for i in keep)
        self._keepalive = keepalive  # e.g. the open TiffFile behind a zarr store

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Storage chunk shape (zarr chunks, TIFF pages/strips), or ``None`` for memory maps."""
        return self._chunks

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"LazyArray(shape={self._shape}, dtype={self._dtype}, format={self.format!r}, spec={self.spec!r})"

    def __getitem__(self, key: Any) -> Any:
        out = self.source[self._source_key(key)]
        if isinstance(self.source, np.ndarray) or np.dtype(out.dtype) != self._dtype:
            out = np.array(out, dtype=self._dtype)  # copy out of the memory map / into native byte order
        out = np.asarray(out)
        return out[()] if out.ndim == 0 else out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_image, (self.spec,))

    def _source_key(self, key: Any) -> Any:
        """Map a key on :attr:`shape` to a key on the source by inserting 0 at the dropped axes."""
        if not self.drop_axes:
            return key
        key = key if isinstance(key, tuple) else (key,)
        if any(k is None for k in key):
            raise IndexError("LazyArray does not support np.newaxis; index first, then expand the numpy result")
        n_ellipsis = sum(k is Ellipsis for k in key)
        if n_ellipsis > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        n_free = self.ndim - (len(key) - n_ellipsis)
        if n_free < 0:
            raise IndexError(f"too many indices for an array of {self.ndim} dimensions")
        full: list[Any] = []
        for k in key:
            full.extend([slice(None)] * n_free if k is Ellipsis else [k])
        if not n_ellipsis:
            full.extend([slice(None)] * n_free)
        it = iter(full)
        return tuple(0 if i in self.drop_axes else next(it) for i in range(len(self.source.shape)))


def open_image(spec: str | os.PathLike) -> LazyArray:
    """Open a TIFF, zarr / OME-Zarr, MRC or ``.npy`` image lazily as a 2D (YX) or 3D (ZYX) :class:`LazyArray`."""
    text = os.fspath(spec)
    if not isinstance(text, str):
        raise ImageReadError(f"{text!r}: image specs must be text paths; decode the bytes first")
    root_text, sep, name = text.partition(ZARR_SEPARATOR)
    path = Path(os.path.expanduser(root_text))
    name = name.strip("/")
    if not path.exists():
        raise ImageReadError(f"{text}: no such file or directory; check the path")
    if sep and not _is_zarr(path):
        raise ImageReadError(
            f"{text}: '{ZARR_SEPARATOR}' names an array inside a zarr store, but {root_text} is not one; "
            f"give vol.zarr{ZARR_SEPARATOR}group/array"
        )
    if _is_zarr(path):
        if sep and not name:
            raise ImageReadError(
                f"{text}: empty array path after '{ZARR_SEPARATOR}'; write vol.zarr{ZARR_SEPARATOR}array"
            )
        return _open_zarr(path, name, text)
    if path.is_dir():
        raise ImageReadError(
            f"{text}: is a directory, not a zarr store (no zarr.json, .zgroup or .zarray); give an image file "
            f"({_SUPPORTED})"
        )
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ImageReadError(f"{text}: file is empty; re-export or re-copy the image")
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path, text)
    if suffix in MRC_SUFFIXES:
        return _open_mrc(path, text)
    if suffix in NPY_SUFFIXES:
        return _open_npy(path, text)
    raise ImageReadError(f"{text}: unsupported image format '{suffix or '(no extension)'}'; use {_SUPPORTED}")


def read_labels(spec: str | os.PathLike) -> LazyArray:
    """Open labels like :func:`open_image`, requiring an integer or bool dtype (0 = unlabeled, 1..K = classes)."""
    image = open_image(spec)
    if image.dtype.kind not in "biu":
        raise ImageReadError(
            f"{os.fspath(spec)}: labels must be integers (0 = unlabeled, 1..K = classes); got {image.dtype}; "
            "save them as an integer array (e.g. uint8)"
        )
    return image


def image_info(spec: str | os.PathLike) -> dict[str, Any]:
    """Shape, dtype, format name and chunk shape (``None`` when unchunked) of an image, without reading pixels."""
    image = open_image(spec)
    return {
        "spec": image.spec,
        "format": image.format,
        "shape": image.shape,
        "dtype": str(image.dtype),
        "chunks": image.chunks,
        "nbytes": image.nbytes,
    }


# -- helpers -----------------------------------------------------------------------------------------------------------


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in _ZARR_MARKERS)


def _check_image(spec: str, shape: tuple[int, ...], dtype: np.dtype, axes: str | None = None) -> tuple[int, ...]:
    """Validate dtype and dimensionality; return the size-1 axes to drop so that 2 or 3 remain.

    ``axes`` (one letter per axis, tifffile style: C channel, S sample, T time) is used when known.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ImageReadError(f"{spec}: pixel type {dtype} is not supported; save an integer or float image")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ImageReadError(f"{spec}: is {len(shape)}-D (shape {shape}); {_DIMS}")
    if any(s == 0 for s in shape):
        raise ImageReadError(f"{spec}: is empty (shape {shape}); re-export the image")
    if axes is not None and len(axes) == len(shape):
        samples = axes.find("S")
        if samples >= 0 and shape[samples] > 1:
            if samples == len(shape) - 1 or len(shape) != 3:  # interleaved samples (YXS) or a planar colour volume
                raise ImageReadError(
                    f"{spec}: is a colour (RGB/RGBA) image (axes {axes}); {_DIMS}: convert it to grey-scale"
                )
            _log.warning(  # planar samples (SYX): grey pages tagged RGB; napari shows them as slices, so do we
                "%s: tagged as planar RGB (axes %s, shape %s) but read as %d grey slices (ZYX), as napari shows it",
                spec,
                axes,
                shape,
                shape[samples],
            )
        for letter, what in (("C", "channels"), ("T", "time points")):
            if letter in axes and shape[axes.index(letter)] > 1:
                raise ImageReadError(
                    f"{spec}: has {shape[axes.index(letter)]} {what} (axes {axes}, shape {shape}); {_DIMS}: "
                    "save one channel / time point"
                )
    elif len(shape) >= 3 and shape[-1] in (3, 4) and dtype == np.uint8:
        raise ImageReadError(
            f"{spec}: looks like a colour (RGB/RGBA) image (shape {shape}, uint8); {_DIMS}: convert it to grey-scale"
        )
    drop: list[int] = []
    leading = [i for i in range(len(shape) - 2) if shape[i] == 1]
    while len(shape) - len(drop) > 3 and leading:
        drop.append(leading.pop(0))
    if len(shape) - len(drop) > 3:
        raise ImageReadError(
            f"{spec}: is {len(shape)}-D (shape {shape}{f', axes {axes}' if axes else ''}); {_DIMS}; "
            "extra axes must have size 1: save one channel / time point"
        )
    return tuple(drop)


# -- TIFF --------------------------------------------------------------------------------------------------------------


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_log() -> Iterator[_LogCollector]:
    """Collect (and silence) what tifffile logs while the block runs; it logs damage instead of raising."""
    logger = logging.getLogger("tifffile")
    handler = _LogCollector()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _open_tiff(path: Path, spec: str) -> LazyArray:
    import tifffile

    file_size = path.stat().st_size
    tif = None
    try:
        with _tifffile_log() as log:
            try:
                tif = tifffile.TiffFile(path)
                if not tif.series:
                    raise ImageReadError(f"{spec}: TIFF file holds no image data; re-export the image")
                series = tif.series[0]
                shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
                compressed_end = max(
                    (o + c for p in series.pages if p is not None for o, c in zip(p.dataoffsets, p.databytecounts)),
                    default=0,
                )
                missing = any(p is None for p in series.pages)
            except ImageReadError:
                raise
            except Exception as exc:
                raise ImageReadError(
                    f"{spec}: cannot read TIFF ({one_line(exc, typed=True)}); check the file is a complete TIFF"
                ) from exc
        damage = [m for m in log.messages if any(s in m.lower() for s in _TIFF_CORRUPT_LOGS)]
        contiguous_end = series.dataoffset + series.nbytes if series.dataoffset is not None else 0
        if damage or missing or max(compressed_end, contiguous_end) > file_size:
            detail = damage[0].split(">", 1)[-1].strip() if damage else "image data end past the end of the file"
            raise ImageReadError(f"{spec}: TIFF file is truncated or corrupt ({detail}); re-export or re-copy it")
        drop = _check_image(spec, shape, dtype, axes)

        if series.dataoffset is not None:  # uncompressed and contiguous: memory-map
            try:
                data: Any = tifffile.memmap(path, series=0, level=0, mode="r")  # or zarr, or an array, below
            except Exception:
                pass
            else:
                tif.close()
                return LazyArray(data, format="tiff", spec=spec, drop_axes=drop)

        import zarr

        try:
            store = tif.aszarr(series=0, level=0)
            data = zarr.open(store, mode="r")
            if not isinstance(data, zarr.Array) or tuple(data.shape) != shape:
                raise ValueError("tifffile's zarr store did not give one array")
        except Exception as exc:
            if series.nbytes > MAX_EAGER_TIFF_BYTES:
                raise ImageReadError(
                    f"{spec}: cannot read this TIFF lazily ({one_line(exc, typed=True)}) and at "
                    f"{series.nbytes / 1024**3:.1f} GiB it is too large to load whole; convert it to a zarr array"
                ) from None
            try:
                with _tifffile_log():
                    data = series.asarray()
            except Exception as exc2:
                raise ImageReadError(
                    f"{spec}: cannot read TIFF pixels ({one_line(exc2, typed=True)}); re-export it"
                ) from None
            tif.close()
            return LazyArray(data, format="tiff", spec=spec, drop_axes=drop)
        return LazyArray(data, format="tiff", spec=spec, drop_axes=drop, chunks=tuple(data.chunks), keepalive=tif)
    except BaseException:
        if tif is not None:
            tif.close()
        raise


# -- zarr / OME-Zarr ---------------------------------------------------------------------------------------------------


def _multiscales(attrs: Any) -> list[dict[str, Any]] | None:
    """OME-Zarr ``multiscales`` of a group's attributes (v0.5 under ``"ome"``, v0.4 at the top), else None."""
    attrs = dict(attrs)
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    return found if isinstance(found, list) and found else None


def _ome_axes(axes: Any) -> str | None:
    """OME-Zarr axes as tifffile-style letters (channel -> C, time -> T, space -> its name), if readable."""
    if not isinstance(axes, list):
        return None
    letters = []
    for axis in axes:
        kind = axis.get("type") if isinstance(axis, dict) else None
        name = str(axis.get("name", "?") if isinstance(axis, dict) else axis)
        letters.append({"channel": "C", "time": "T"}.get(str(kind), name[:1].upper() or "?"))
    return "".join(letters)


def _array_paths(group: Any, limit: int = 12) -> list[str]:
    import zarr

    try:
        paths = sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))
    except Exception:
        return []
    return paths[:limit] + (["..."] if len(paths) > limit else [])


def _open_zarr(path: Path, name: str, spec: str) -> LazyArray:
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:
        raise ImageReadError(
            f"{spec}: cannot open zarr store ({one_line(exc, typed=True)}); check its metadata"
        ) from None
    root = path
    if name:
        if not isinstance(node, zarr.Group):
            raise ImageReadError(f"{spec}: {root} is a zarr array, not a group; drop '{ZARR_SEPARATOR}{name}'")
        try:
            node = node[name]
        except Exception:
            arrays = _array_paths(node)
            raise ImageReadError(
                f"{spec}: zarr group {root} has no '{name}'; name one of its arrays "
                f"(arrays: {', '.join(arrays) or 'none'})"
            ) from None
    fmt, axes = "zarr", None
    if isinstance(node, zarr.Group):
        multiscales = _multiscales(node.attrs)
        if multiscales is None:
            arrays = _array_paths(node)
            if not arrays:
                raise ImageReadError(f"{spec}: is a zarr group with no arrays; give the path of a zarr array")
            base = spec.rstrip("/")
            example = f"{base}/{arrays[0]}" if name else f"{base}{ZARR_SEPARATOR}{arrays[0]}"
            raise ImageReadError(f"{spec}: is a zarr group; name an array: {example} (arrays: {', '.join(arrays)})")
        try:
            dataset = multiscales[0]["datasets"][0]["path"]
            node = node[dataset]
        except Exception as exc:
            raise ImageReadError(
                f"{spec}: OME-Zarr multiscales metadata names no readable dataset ({one_line(exc, typed=True)}); "
                f"name an array with {ZARR_SEPARATOR}"
            ) from None
        if not isinstance(node, zarr.Array):
            raise ImageReadError(
                f"{spec}: OME-Zarr dataset '{dataset}' is not an array; name an array with {ZARR_SEPARATOR}"
            )
        fmt, axes = "ome-zarr", _ome_axes(multiscales[0].get("axes"))
    drop = _check_image(spec, tuple(node.shape), node.dtype, axes)
    return LazyArray(node, format=fmt, spec=spec, drop_axes=drop, chunks=tuple(node.chunks))


# -- MRC and .npy ------------------------------------------------------------------------------------------------------


def _open_mrc(path: Path, spec: str) -> LazyArray:
    import mrcfile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except Exception as exc:
            raise ImageReadError(
                f"{spec}: cannot read MRC ({one_line(exc, typed=True)}); check the file is a complete MRC"
            ) from None
    try:
        data = mrc.data
    finally:
        mrc.close()  # the memmap stays valid (numpy keeps the mapping) and read-only
    if data is None:
        detail = str(caught[-1].message).splitlines()[0] if caught else "no data"
        raise ImageReadError(f"{spec}: MRC file is truncated or corrupt ({detail}); re-export or re-copy it")
    drop = _check_image(spec, tuple(data.shape), data.dtype)
    return LazyArray(data, format="mrc", spec=spec, drop_axes=drop)


def _open_npy(path: Path, spec: str) -> LazyArray:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if any(s in str(exc) for s in ("allow_pickle", "Object arrays", "Python objects")):
            raise ImageReadError(
                f"{spec}: .npy holds Python objects (object dtype), not pixels; save a numeric array"
            ) from None
        raise ImageReadError(
            f"{spec}: cannot read .npy ({one_line(exc, typed=True)}); check the file is complete"
        ) from None
    except Exception as exc:
        raise ImageReadError(
            f"{spec}: cannot read .npy ({one_line(exc, typed=True)}); check the file is complete"
        ) from None
    if not isinstance(data, np.ndarray):
        raise ImageReadError(f"{spec}: is not a single .npy array; save one array with numpy.save")
    drop = _check_image(spec, tuple(data.shape), data.dtype)
    return LazyArray(data, format="npy", spec=spec, drop_axes=drop)
