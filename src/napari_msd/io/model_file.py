"""One-file trained models: weights, architecture, normalisation, classes and provenance.

A model file is a `safetensors <https://github.com/huggingface/safetensors>`_ file, so loading
never executes code from it. The weights are its tensors (the model's ``state_dict``); its header
metadata (str -> str) holds two entries:

* ``"napari_msd.metadata"``: :class:`ModelMetadata` as one JSON object;
* ``"napari_msd.sha256"``: SHA-256 over that JSON and every tensor (name-sorted: name, dtype,
  shape, raw bytes), verified on every read, so a damaged or edited file is refused.

Files are written atomically (temporary file in the same directory, fsync, ``os.replace``) and an
existing file is only replaced when asked to. :func:`load_model` and :func:`read_metadata` also read a
bioimage.io model package exported by napari-msd (a zip with an ``rdf.yaml``, see :mod:`.bioimageio`): the model
file attached to it, verified the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from .. import __version__
from ..errors import NapariMsdError, one_line
from ..models.forest_buffers import model_config
from ..models.registry import ARCHITECTURES, build_model

FORMAT_VERSION = 1
METADATA_KEY = "napari_msd.metadata"
DIGEST_KEY = "napari_msd.sha256"

# Distinct, dark-background-friendly colours; class i gets PALETTE[i % len(PALETTE)].
PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#fffac8",
    "#800000",
    "#aaffc3",
)
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class ModelFileError(NapariMsdError):
    """A model file cannot be read; the message is one line naming the file and what to do."""


def default_class_colors(n: int) -> list[str]:
    """``n`` colours from the fixed :data:`PALETTE`, cycling when there are more classes."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


@dataclass
class ModelMetadata:
    """Everything but the weights: enough to rebuild, feed and interpret a trained network.

    ``normalization`` describes the input scaling, e.g. ``{"method": "percentile", "low": 12.0,
    "high": 240.0, "percentiles": [1, 99]}`` (``{}`` when unset). ``provenance`` holds where the
    model came from (library versions, ``created``, and e.g. ``data_shape``, ``steps``, ``metrics``).
    ``receptive_field`` is the theoretical radius in pixels, ``effective_halo`` a measured one.
    ``input`` says how network inputs are cut from an image (``{"mode": "2.5d", "slices": 5,
    "orientations": ["xy"]}``, see :class:`napari_msd.base.inputs.InputSpec`; ``{}``: 2D slices).
    """

    arch: str
    config: dict[str, Any]
    class_names: list[str]
    receptive_field: int
    class_colors: list[str] = field(default_factory=list)
    normalization: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    effective_halo: int | None = None
    input: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a non-empty string, got {self.arch!r}")
        for name in ("config", "normalization", "provenance", "input"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.class_names, list | tuple) or not all(isinstance(n, str) for n in self.class_names):
            raise ValueError(f"class_names must be a list of strings, got {self.class_names!r}")
        self.class_names = list(self.class_names)
        self.class_colors = list(self.class_colors) or default_class_colors(len(self.class_names))
        if len(self.class_colors) != len(self.class_names):
            raise ValueError(f"{len(self.class_colors)} class colours given for {len(self.class_names)} classes")
        bad = [c for c in self.class_colors if not isinstance(c, str) or not _HEX_COLOR.match(c)]
        if bad:
            raise ValueError(f"class colours must be hex strings like '#ff0000', got {bad[0]!r}")
        self.class_colors = [c.lower() for c in self.class_colors]
        for name in ("receptive_field", "effective_halo", "format_version"):
            value = getattr(self, name)
            if value is None and name == "effective_halo":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing required ones raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"metadata must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"metadata lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    metadata: ModelMetadata | None = None,
    *,
    class_names: list[str] | None = None,
    class_colors: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    effective_halo: int | None = None,
    input_spec: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and its metadata atomically to ``path`` (any extension; ``.msd`` suggested).

    ``arch``, ``config`` and ``receptive_field`` always come from the model. The other fields come
    from the keyword arguments, else from ``metadata`` (e.g. one returned by :func:`load_model`),
    else defaults: class names ``"class 1"``... and palette colours. Provenance is the library
    versions and UTC creation time, updated with ``metadata.provenance`` and then ``provenance``.

    Raises ``ValueError`` when the class names do not match the model's output channels and
    ``FileExistsError`` when ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it or choose another file name")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; choose a file name such as {path / 'model.msd'}")
    if model.arch not in ARCHITECTURES:
        raise ValueError(f"architecture {model.arch!r} is not registered in napari_msd.models; it could not be loaded")

    def pick(value: Any, name: str, default: Any) -> Any:
        if value is not None:
            return value
        return getattr(metadata, name) if metadata is not None else default

    net: Any = model  # a registered network: arch, config(), receptive_field (nn.Module types them as tensors)
    config = model_config(net)  # its forest's description included, where it takes a forest's channels
    out_channels: Any = getattr(model, "out_channels", config.get("out_channels"))
    n_out = int(out_channels)
    names = list(pick(class_names, "class_names", [f"class {i + 1}" for i in range(n_out)]))
    if len(names) != n_out:
        raise ValueError(f"{len(names)} class names given but the model predicts {n_out} classes; give one per class")
    colors = list(pick(class_colors, "class_colors", []))
    if class_colors is None and len(colors) != n_out:
        colors = []  # colours of other classes in `metadata`: use the palette
    meta = ModelMetadata(
        arch=net.arch,
        config=config,
        class_names=names,
        receptive_field=int(net.receptive_field),
        class_colors=colors,
        normalization=dict(pick(normalization, "normalization", {})),
        provenance={**_default_provenance(), **pick(None, "provenance", {}), **(provenance or {})},
        effective_halo=pick(effective_halo, "effective_halo", None),
        input=dict(pick(input_spec, "input", {})),
    )
    meta_json = json.dumps(meta.to_dict(), sort_keys=True, default=_to_json)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(tensors, metadata={METADATA_KEY: meta_json, DIGEST_KEY: _digest(tensors, meta_json)})

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """The metadata of a model file, checksum verified, without building the network."""
    return _read(Path(path))[0]


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMetadata]:
    """Rebuild the network stored at ``path``; returns it in eval mode on ``device``, and its metadata."""
    path = Path(path)
    meta, tensors = _read(path)
    try:
        model = build_model(meta.arch, meta.config)
    except ValueError as err:
        raise ModelFileError(
            f"cannot load model file {path}: {one_line(err)}; upgrade napari-msd or re-export the model"
        ) from None
    expected = model.state_dict()
    problem = _state_mismatch(expected, tensors)
    if problem:
        raise ModelFileError(
            f"model file {path} has weights that do not match its {meta.arch} configuration "
            f"({problem}); re-save or re-export the model"
        )
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model.to(float_dtypes.pop())
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta


def _read(path: Path) -> tuple[ModelMetadata, dict[str, torch.Tensor]]:
    """Parse and verify a model file (or the one in a napari-msd bioimage.io package); every failure is a
    one-line :class:`ModelFileError`."""
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; check the path")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file; choose a napari-msd model file")
    if _is_zip(path):
        from .bioimageio import is_package, read_model_file_bytes

        if is_package(path):
            header, tensors = _parse_bytes(path, read_model_file_bytes(path))
            return _verify(path, header, tensors)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError: not safetensors, truncated or unreadable
        hint = _sniff(path)
        raise ModelFileError(
            f"{path} is not a valid napari-msd model file ({hint or one_line(err)}); "
            "choose a model file saved by napari-msd, or re-save it if it was truncated"
        ) from None
    return _verify(path, header, tensors)


def _parse_bytes(path: Path, data: bytes) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Header metadata and tensors of a model file held in memory (the one attached to the package ``path``)."""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        tensors = safetensors.torch.load(data)
    except Exception as err:  # noqa: BLE001 -- any parse failure: a damaged attachment
        raise ModelFileError(
            f"the napari-msd model file in {path} is damaged ({one_line(err)}); re-export the package"
        ) from None
    if not isinstance(header, dict):
        raise ModelFileError(f"the napari-msd model file in {path} is damaged (bad header); re-export the package")
    return header, tensors


def _verify(
    path: Path, header: dict[str, str], tensors: dict[str, torch.Tensor]
) -> tuple[ModelMetadata, dict[str, torch.Tensor]]:
    """Check a model file's metadata, format version and checksum; every failure is a one-line error."""
    if METADATA_KEY not in header or DIGEST_KEY not in header:
        raise ModelFileError(
            f"{path} is not a napari-msd model file (a safetensors file without napari-msd "
            "metadata); choose a model file saved by napari-msd"
        )
    corrupted = f"model file {path} is corrupted or was modified"
    try:
        data = json.loads(header[METADATA_KEY])
        version = data["format_version"]
    except (ValueError, TypeError, KeyError):
        raise ModelFileError(f"{corrupted} (unreadable metadata); re-save or re-export the model") from None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelFileError(
            f"model file {path} was written by a newer napari-msd (format {version} > "
            f"{FORMAT_VERSION}); upgrade napari-msd"
        )
    if _digest(tensors, header[METADATA_KEY]) != header[DIGEST_KEY]:
        raise ModelFileError(f"{corrupted} (checksum mismatch); re-save or re-export the model")
    try:
        return ModelMetadata.from_dict(data), tensors
    except (ValueError, TypeError) as err:
        raise ModelFileError(
            f"model file {path} has invalid metadata ({one_line(err)}); re-save or re-export the model"
        ) from None


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """SHA-256 over the metadata JSON and each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """A short description of the first key/shape difference between two state dicts, or ``""``."""
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing:
        return f"{len(missing)} missing tensor(s), e.g. {missing[0]!r}"
    if extra:
        return f"{len(extra)} unexpected tensor(s), e.g. {extra[0]!r}"
    for key in sorted(expected):
        if expected[key].shape != found[key].shape:
            return f"{key!r} has shape {tuple(found[key].shape)}, expected {tuple(expected[key].shape)}"
    return ""


def _default_provenance() -> dict[str, Any]:
    return {
        "napari_msd_version": __version__,
        "torch_version": torch.__version__,
        "safetensors_version": getattr(safetensors, "__version__", "unknown"),
        "python_version": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _to_json(value: Any) -> Any:
    """JSON fallback for NumPy scalars/arrays, tensors, paths and sets in user-supplied metadata."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} cannot be stored; use plain types")


def _sniff(path: Path) -> str:
    """Name common non-model files by their first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return ""
    if head.startswith(b"PK\x03\x04") and not _is_torch_zip(path):
        return "a zip file that is not a bioimage.io model package (no rdf.yaml)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "a PyTorch pickle checkpoint, which is never loaded because it can run code"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    return ""


def _is_zip(path: Path) -> bool:
    """Whether ``path`` starts like a zip file (a bioimage.io package, or a PyTorch checkpoint)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _is_torch_zip(path: Path) -> bool:
    """Whether the zip file ``path`` is a PyTorch checkpoint (``torch.save`` writes ``<name>/data.pkl``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return True  # an unreadable zip: say what it most likely is


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
