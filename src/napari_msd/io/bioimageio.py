"""bioimage.io model packages: export a trained model version, and read such a package back as a version.

:func:`export_package` writes a `bioimage.io <https://bioimage.io>`_ model package (a zip with an ``rdf.yaml``)
that bioimageio.core validates and runs without napari-msd:

* the network as **TorchScript** (``weights.pt``): scriptable twins of :class:`~napari_msd.models.MSDNet` and
  :class:`~napari_msd.models.UNet` (the fast MS-D's custom autograd function cannot be scripted or traced), so
  any input size works, not only the test input's; the export checks that the twin reproduces the network;
* **preprocessing** that reproduces napari-msd's stored normalisation bit for bit: ``ensure_dtype`` float32,
  ``scale_linear`` by gain 1 and offset ``-low``, ``scale_linear`` by ``1 / (high - low)``, ``ensure_dtype``
  float32 (the same float32 operations, in the same order, as :class:`~napari_msd.base.normalization.Normalization`);
  **postprocessing** ``softmax`` over the class channel, so the output is napari-msd's class probabilities;
* a **test input** cut from the image the model was trained on (if given) or a deterministic synthetic one,
  and the **test output** napari-msd itself predicts for it: axes ``batch, channel, y, x`` for 2D models,
  the 2.5D slices as input channels (the middle one is labelled), ``batch, channel, z, y, x`` for 3D models;
* class names as the output channel names, the model's name, a description, a README, authors, the MS-D or
  U-Net citation, a license, tags, sample tensors (TIFF) and a cover (the test input beside its prediction);
* the napari-msd **model file** itself as an attachment (``napari-msd-model.msd``), so that importing the
  package restores the exact version: weights, metadata, class names and colours, normalisation, provenance.

Reading needs no bioimageio library: :func:`is_package` recognises a package, :func:`load_package` (and
:func:`napari_msd.io.model_file.load_model`, which dispatches here) reads its attached model file, verified
against the package's SHA-256 and the model file's own checksum. A package not exported by napari-msd is refused
with one line. Export imports bioimageio.spec lazily and says how to install it when it is missing; nothing
here reaches the network (no URLs in the description, so validation makes no requests).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import secrets
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..base.inputs import InputSpec, plane_axes, read_input
from ..base.normalization import Normalization
from ..errors import one_line
from ..models.forest_buffers import forest_of
from ..models.precision import inference_precision
from ..models.registry import ARCHITECTURES
from ..models.scriptable import SCRIPTABLE, script_network
from .model_file import ModelFileError, ModelMetadata, _to_json, load_model, save_model

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
MODEL_ATTACHMENT = "napari-msd-model.msd"
CONFIG_KEY = "napari_msd"
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
WEIGHTS_FILE, TEST_INPUT, TEST_OUTPUT, README = "weights.pt", "test_input.npy", "test_output.npy", "README.md"
SAMPLE_INPUT, SAMPLE_OUTPUT, COVER = "sample_input.tif", "sample_output.tif", "cover.png"
INSTALL_HINT = "pip install 'napari-msd[bioimageio]'"
DEFAULT_LICENSE = "CC-BY-4.0"
DEFAULT_AUTHOR = "napari-msd user"

CITATIONS = {
    "msd": {
        "text": "Pelt, D. M. & Sethian, J. A. A mixed-scale dense convolutional neural network for image analysis. "
        "PNAS 115, 254-259 (2018)",
        "doi": "10.1073/pnas.1715832114",
    },
    "unet": {
        "text": "Ronneberger, O., Fischer, P. & Brox, T. U-Net: Convolutional Networks for Biomedical Image "
        "Segmentation. MICCAI 2015, LNCS 9351, 234-241 (2015)",
        "doi": "10.1007/978-3-319-24574-4_28",
    },
}
# MUNet (Zhang, Cheng & Gan) and the gated-skip U-Net (F-CLmser-S; Guo, Huang, Chen & Tu) extend the U-Net; a
# bioimage.io citation needs a DOI or URL, and only the U-Net's is known here: their packages cite it, and name their
# own paper in the description (ARCH_PAPERS)
CITATIONS["munet"] = CITATIONS["gated_unet"] = CITATIONS["unet"]
ARCH_PAPERS = {
    "munet": "Zhang, Cheng & Gan, MUNet: A Multi-scale U-Net Framework for Medical Image Segmentation",
    "gated_unet": "Guo, Huang, Chen & Tu, Regularize network skip connections by gating mechanisms for electron "
    "microscopy image segmentation (F-CLmser-S)",
}
ARCH_LABELS = {"msd": "MS-D", "unet": "U-Net", "munet": "MUNet", "gated_unet": "gated-skip U-Net"}

# test inputs: in-plane side (2D / 2.5D) and (z, y, x) sides (3D), at most; images are cropped around their middle
TEST_SIDE_2D = 256
TEST_SIDE_3D = (16, 64, 64)
SYNTHETIC_SIDE_2D = 128  # a synthetic test input's in-plane side (no image given)
COVER_SIDE = 256  # the cover is two square panels of about this side: the test input, and its prediction
# the smallest in-plane side a package declares for MS-D (it runs on any size: reflective boundaries)
MSD_MIN_SIDE = 16
MSD_MIN_DEPTH = 4
# the scripted network may differ from the fast one by float rounding only
SCRIPT_TOLERANCE = 1e-3
MAX_REASON = 400  # characters of a validation error kept in the one-line message


class PackageError(ModelFileError):
    """A bioimage.io package cannot be written or read; the message is one line saying what to do."""


# -- reading ---------------------------------------------------------------------------------------------------
def is_package(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zip file with a bioimage.io description (``rdf.yaml`` / ``bioimageio.yaml``) at its
    top level (any bioimage.io package, napari-msd's or not)."""
    path = Path(path)
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return _rdf_name(archive.namelist()) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def _rdf_name(names: Sequence[str]) -> str | None:
    top = [n for n in names if "/" not in n]
    for name in RDF_NAMES:
        if name in top:
            return name
    return next((n for n in top if n.endswith(".bioimageio.yaml")), None)


def read_model_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """The napari-msd model file attached to the package at ``path``, checked against the package's SHA-256.

    Raises :class:`PackageError` (one line) for an unreadable zip, a package napari-msd did not export, and a
    missing or modified attachment.
    """
    import yaml  # PyYAML, a dependency of dask

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            rdf_name = _rdf_name(archive.namelist())
            if rdf_name is None:
                raise PackageError(
                    f"{path} is a zip file but not a bioimage.io model package (no rdf.yaml); choose a model "
                    "file saved by napari-msd or a package exported by 'napari-msd export'"
                )
            try:
                rdf = yaml.safe_load(archive.read(rdf_name))
            except yaml.YAMLError as err:
                raise PackageError(f"{path} has an unreadable {rdf_name} ({one_line(err)}); re-export it") from None
            config = rdf.get("config") if isinstance(rdf, dict) else None
            ours = config.get(CONFIG_KEY) if isinstance(config, dict) else None
            member = ours.get("model_file") if isinstance(ours, dict) else None
            if not isinstance(member, str):
                raise PackageError(
                    f"{path} is a bioimage.io model package but not a napari-msd export (it holds no napari-msd "
                    "model file); run it with bioimageio.core or another bioimage.io tool, or load a package "
                    "exported by 'napari-msd export'"
                )
            try:
                data = archive.read(member)
            except KeyError:
                raise PackageError(
                    f"{path} lacks its napari-msd model file {member!r} (an incomplete copy?); re-export it"
                ) from None
    except zipfile.BadZipFile as err:
        raise PackageError(f"{path} is not a readable zip file ({one_line(err)}); re-copy or re-export it") from None
    except OSError as err:
        raise PackageError(f"cannot read {path} ({one_line(err)}); check the file") from None
    expected = _attachment_sha256(rdf, member)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise PackageError(
            f"{path} is corrupted or was modified (its napari-msd model file does not match the package's "
            "SHA-256); re-export the package"
        )
    return data


def _attachment_sha256(rdf: dict[str, Any], member: str) -> str | None:
    for entry in rdf.get("attachments") or []:
        if isinstance(entry, dict) and str(entry.get("source", "")).split("/")[-1] == member:
            sha = entry.get("sha256")
            return str(sha) if sha else None
    return None


def load_package(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMetadata]:
    """The model version exported to the package at ``path``: its network (eval mode, on ``device``) and metadata,
    exactly as saved. Raises :class:`PackageError` (or :class:`ModelFileError`) with one line."""
    if not is_package(path):
        raise PackageError(
            f"{path} is not a bioimage.io model package (a zip file with an rdf.yaml); choose a package "
            "exported by 'napari-msd export'"
        )
    return load_model(path, device)


# -- export ----------------------------------------------------------------------------------------------------
def _bioimageio_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise PackageError(f"bioimage.io export needs bioimageio.core; install it with: {INSTALL_HINT}") from None
    return spec


def _size_rules(model: nn.Module, spec: InputSpec) -> list[tuple[int, int]]:
    """Per spatial network axis (z, y, x or y, x), the smallest input size and the step between valid ones."""
    factors = tuple(int(f) for f in getattr(model, "pool_factors", ()))
    if factors:  # U-Net: multiples of its pooling (it pads other sizes, but tiles should align to the grid)
        return [(f, f) for f in factors]
    rules = [(MSD_MIN_SIDE, 1)] * 2
    return [(MSD_MIN_DEPTH, 1), *rules] if spec.model_ndim == 3 else rules


def _valid_size(n: int, rule: tuple[int, int], limit: int) -> int:
    low, step = rule
    n = min(n, max(limit, low))
    return low if n <= low else low + (n - low) // step * step


def _synthetic_image(shape: tuple[int, ...], norm: Normalization | None) -> np.ndarray:
    """Smooth blobs plus noise spanning the normalisation's ``low``..``high`` (0..1 without one), seeded."""
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    smooth = sum(np.sin(g / (3.0 + 2 * i) + rng.uniform(0, 2 * np.pi)) for i, g in enumerate(grids))
    unit = np.clip(0.5 + 0.15 * smooth + rng.normal(0.0, 0.08, shape), 0.0, 1.0)
    low, high = (norm.low, norm.high) if norm is not None else (0.0, 1.0)
    return (low + (high - low) * unit).astype(np.float32)


def _test_input(image: Any, model: nn.Module, spec: InputSpec, norm: Normalization | None) -> np.ndarray:
    """One raw (not normalised) network input, ``(channels, *spatial)`` float32: cut around the middle of
    ``image`` (the middle plane of a volume for 2D / 2.5D models), or synthetic when ``image`` is None."""
    rules = _size_rules(model, spec)
    if spec.model_ndim == 3:
        limits: tuple[int, ...] = TEST_SIDE_3D
    else:
        limits = (TEST_SIDE_2D, TEST_SIDE_2D)
    if image is None:
        wanted = limits if spec.model_ndim == 3 else (SYNTHETIC_SIDE_2D, SYNTHETIC_SIDE_2D)
        sides = tuple(_valid_size(n, rule, n) for n, rule in zip(wanted, rules))
        image = _synthetic_image((spec.slices, *sides) if spec.mode == "2.5d" else sides, norm)
    try:
        spec.check_image(len(image.shape), "the test image")
    except ValueError as err:
        raise PackageError(f"{one_line(err)}; give an image like the ones the model was trained on") from None
    shape = tuple(int(n) for n in image.shape)
    if min(shape) < 1:
        raise PackageError(f"the test image is empty (shape {shape}); give another image")
    if spec.model_ndim == 3:
        in_plane: tuple[int, ...] = (0, 1, 2)
        orientation = "xy"
    else:
        orientation = spec.orientations[0]
        in_plane = plane_axes(len(shape), orientation)[0]
    sizes = [min(shape[a], _valid_size(shape[a], rule, limit)) for a, rule, limit in zip(in_plane, rules, limits)]
    center = [n // 2 for n in shape]
    try:
        x, _ = read_input(image, spec, center, sizes, orientation)
    except Exception as err:  # noqa: BLE001 -- a lazy reader's error, on one line
        raise PackageError(f"cannot read the test image ({one_line(err, typed=True)}); check the image") from None
    x = np.asarray(x, dtype=np.float32)
    lead = x.ndim - len(rules)
    pads = [(0, 0)] * lead + [(0, max(0, rule[0] - n)) for n, rule in zip(x.shape[lead:], rules)]
    if any(p[1] for p in pads):  # smaller than the smallest valid input: mirror it up (a consistent test pair)
        x = np.pad(x, pads, mode="symmetric")
    return np.ascontiguousarray(x)


def _predict(model: nn.Module, x: np.ndarray, norm: Normalization | None) -> tuple[np.ndarray, np.ndarray]:
    """napari-msd's logits and class probabilities for one raw input ``(channels, *spatial)``: normalised as
    :class:`~napari_msd.inference.Predictor` does, then the network and a softmax over classes. In float32 whatever
    the CPU (:mod:`napari_msd.models.precision`): they become the package's test outputs, which its float32 TorchScript
    copy must reproduce."""
    normed = norm(x) if norm is not None else x.astype(np.float32)
    with torch.inference_mode(), inference_precision("float32"):
        logits = model(torch.from_numpy(np.ascontiguousarray(normed[None]))).float()
        probabilities = torch.softmax(logits, dim=1)
    return logits.numpy(), probabilities.numpy()


def _cover(x: np.ndarray, probabilities: np.ndarray, colors: Sequence[str], spec: InputSpec) -> np.ndarray:
    """A 2:1 RGB picture: the middle plane of the test input, and the same plane coloured by predicted class."""
    if spec.model_ndim == 3:
        plane, classes = x[0, x.shape[1] // 2], probabilities[0, :, probabilities.shape[2] // 2].argmax(0)
    else:
        plane, classes = x[x.shape[0] // 2], probabilities[0].argmax(0)
    side = min(plane.shape)
    top, left = (plane.shape[0] - side) // 2, (plane.shape[1] - side) // 2
    plane = plane[top : top + side, left : left + side].astype(np.float64)
    classes = classes[top : top + side, left : left + side]
    low, high = np.percentile(plane, (1, 99)) if plane.size else (0.0, 1.0)
    gray = np.clip((plane - low) / (high - low if high > low else 1.0), 0.0, 1.0)[..., None] * np.ones(3)
    palette = np.array([[int(c[i : i + 2], 16) / 255.0 for i in (1, 3, 5)] for c in colors])
    overlay = 0.45 * gray + 0.55 * palette[classes]
    picture = np.concatenate([gray, overlay], axis=1)
    zoom = max(1, COVER_SIDE // max(side, 1))
    picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return np.round(picture * 255).astype(np.uint8)


def _write_images(folder: Path, x: np.ndarray, probabilities: np.ndarray, meta: ModelMetadata, spec: InputSpec) -> None:
    """The sample tensors (TIFF, for people) and the cover (PNG) of a package."""
    import imageio.v3 as iio  # a dependency of bioimageio.spec
    import tifffile

    tifffile.imwrite(folder / SAMPLE_INPUT, x[0] if x.shape[0] == 1 else x, photometric="minisblack")
    tifffile.imwrite(folder / SAMPLE_OUTPUT, probabilities[0], photometric="minisblack")
    iio.imwrite(folder / COVER, _cover(x, probabilities, meta.class_colors, spec))


def _preprocessing(norm: Normalization | None) -> list[dict[str, Any]]:
    """bioimage.io ops computing :meth:`Normalization.__call__` in the same float32 operations."""
    ops: list[dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if norm is not None:
        scale = norm.high - norm.low if norm.high > norm.low else 1.0
        if norm.low != 0:  # bioimage.io refuses a scaling that does nothing
            ops.append({"id": "scale_linear", "kwargs": {"gain": 1.0, "offset": -float(norm.low)}})
        if scale != 1:
            ops.append({"id": "scale_linear", "kwargs": {"gain": float(1.0 / scale), "offset": 0.0}})
    ops.append({"id": "ensure_dtype", "kwargs": {"dtype": "float32"}})
    return ops


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_+\- ()]+")


def _clean_name(text: str) -> str:
    name = " ".join(_NAME_CHARS.sub(" ", text).split())[:64].strip()
    return name if len(name) >= 5 else f"napari-msd {name}".strip()


def _describe_mode(spec: InputSpec) -> str:
    if spec.mode == "2.5d":
        return f"2.5D ({spec.slices} slices as channels, the middle one labelled)"
    return spec.mode.upper()


def _readme(meta: ModelMetadata, spec: InputSpec, norm: Normalization | None, name: str) -> str:
    arch = ARCH_LABELS.get(meta.arch, meta.arch)
    prov = meta.provenance or {}
    metrics = prov.get("metrics") if isinstance(prov.get("metrics"), dict) else {}
    lines = [
        f"# {name}",
        "",
        f"A {arch} network trained with [napari-msd](https://pypi.org/project/napari-msd/) from painted strokes "
        f"to segment {len(meta.class_names)} classes in {_describe_mode(spec)} electron-microscopy images.",
        "",
        "## Input",
        "",
        f"- Tensor `{INPUT_ID}`: "
        + ("axes batch, channel, z, y, x" if spec.model_ndim == 3 else "axes batch, channel, y, x")
        + (
            f"; the channels are {spec.slices} consecutive z slices, the middle one is segmented"
            if spec.mode == "2.5d"
            else ""
        ),
        "- Normalisation (preprocessing): "
        + (
            f"`(x - {norm.low!r}) / ({norm.high!r} - {norm.low!r})`, the {norm.percentiles[0]:g} and "
            f"{norm.percentiles[1]:g} percentiles of the training image mapped to 0 and 1 (not clipped)"
            if norm is not None
            else "none (the raw values as float32)"
        ),
        "",
        "## Output",
        "",
        f"- Tensor `{OUTPUT_ID}`: per-class probabilities (softmax over the channel axis); channels: "
        + ", ".join(f"{i}: {n}" for i, n in enumerate(meta.class_names, start=1)),
        f"- Theoretical receptive field: {meta.receptive_field} px radius"
        + (f"; measured effective halo: {meta.effective_halo} px" if meta.effective_halo is not None else "")
        + ". When predicting tile by tile, overlap tiles by at least the halo.",
        "",
        "## Validation",
        "",
    ]
    if metrics:
        lines.append("Scored during training on held-out strokes (whole strokes kept out of training):")
        lines.append("")
        lines += [f"- {k.replace('_', ' ')}: {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float)]
    else:
        lines.append("No validation metrics were recorded with this model.")
    lines += [
        "",
        "The package's test output is napari-msd's own prediction for the test input.",
        "",
        "## Importing back into napari-msd",
        "",
        f"The original model file is attached as `{MODEL_ATTACHMENT}`; napari-msd loads this zip directly "
        "(`napari-msd info`, `napari-msd predict`, Load model in the Model dock).",
        "",
    ]
    return "\n".join(lines)


def _open_test_image(test_image: Any) -> Any:
    if test_image is None or hasattr(test_image, "shape"):
        return test_image
    if isinstance(test_image, str | os.PathLike):
        from .images import open_image

        return open_image(test_image)
    raise PackageError(
        f"test_image must be an array or an image path, got {type(test_image).__name__}; give the training image"
    )


def _check_target(out_zip: str | os.PathLike[str], overwrite: bool) -> Path:
    """The package path, refused (one line) unless it is a .zip in an existing folder, new or ``overwrite``."""
    out = Path(out_zip).expanduser()
    if out.is_dir():
        raise PackageError(f"{out} is a directory; choose a file name such as {out / 'model.zip'}")
    if out.suffix.lower() != ".zip":
        raise PackageError(f"{out}: a bioimage.io package is a .zip file; choose a name such as {out.stem}.zip")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise PackageError(f"{out} already exists; pass overwrite=True to replace it or choose another file name")
    if not out.parent.is_dir():
        raise PackageError(f"output folder {out.parent} does not exist; create it first or choose another file name")
    return out


def _resolve(
    source: str | os.PathLike[str] | tuple[nn.Module, ModelMetadata],
) -> tuple[nn.Module, ModelMetadata, bytes | None]:
    """The network, its metadata and, for a file, the model file's exact bytes (attached unchanged)."""
    if isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[0], nn.Module) or not isinstance(source[1], ModelMetadata):
            raise PackageError("source must be a model file or a (model, ModelMetadata) pair")
        return source[0], source[1], None
    if not isinstance(source, str | os.PathLike):
        raise PackageError(f"source must be a model file or a (model, ModelMetadata) pair, got {type(source).__name__}")
    model, meta = load_model(source)
    original = read_model_file_bytes(source) if is_package(source) else Path(source).read_bytes()
    return model, meta, original


def _check_model(model: nn.Module, meta: ModelMetadata) -> tuple[str, InputSpec, Normalization | None]:
    """Architecture, input description and normalisation of an exportable model, else a one-line error."""
    arch = getattr(model, "arch", None)
    if arch not in ARCHITECTURES or arch not in SCRIPTABLE:
        raise PackageError(f"architecture {arch!r} cannot be exported; export an MS-D or U-Net model")
    if forest_of(model) is not None:
        raise PackageError(
            "this model also takes a random forest's probabilities as input, which bioimage.io cannot run; "
            "train a model without the forest channels (--no-forest-channels) to export it"
        )
    try:
        spec = InputSpec.from_dict(meta.input or {})
        norm = Normalization.from_dict(meta.normalization) if meta.normalization else None
    except (ValueError, TypeError, KeyError) as err:
        raise PackageError(f"the model's metadata is invalid ({one_line(err)}); re-save the model") from None
    n_in, ndim = int(getattr(model, "in_channels", spec.in_channels)), int(getattr(model, "ndim", spec.model_ndim))
    if (n_in, ndim) != (spec.in_channels, spec.model_ndim):
        raise PackageError(
            f"the model ({n_in} input channels, {ndim}D) does not match its input description {spec.to_dict()}; "
            "re-save the model with the right input mode"
        )
    n_classes = int(getattr(model, "out_channels", len(meta.class_names)))
    if len(meta.class_names) != n_classes:
        raise PackageError(f"{len(meta.class_names)} class names for {n_classes} classes; re-save the model")
    if len(set(meta.class_names)) != len(meta.class_names):
        raise PackageError(f"class names must differ for bioimage.io (got {meta.class_names}); rename the classes")
    return str(arch), spec, norm


def _check_script(scripted: torch.jit.ScriptModule, logits: np.ndarray, x: np.ndarray, norm: Any, arch: str) -> None:
    """Refuse to package a TorchScript copy that does not reproduce the network on the test input."""
    normed = norm(x) if norm is not None else x
    with torch.inference_mode():
        check = scripted(torch.from_numpy(np.ascontiguousarray(normed[None]))).numpy()
    worst = float(np.max(np.abs(check - logits))) if logits.size else 0.0
    if not worst <= SCRIPT_TOLERANCE * (1.0 + float(np.max(np.abs(logits)))):
        raise PackageError(
            f"the TorchScript copy of this {ARCH_LABELS[arch]} differs from it by {worst:.3g} on the test input; "
            "this is a napari-msd bug, please report it"
        )


def _check_license(license_id: str) -> None:
    """Refuse a license bioimage.io does not accept with one line (its own error lists all ~700 SPDX ids)."""
    import typing

    try:
        from bioimageio.spec._internal import _generated_spdx_license_literals as spdx
    except ImportError:  # pragma: no cover -- a later bioimageio.spec: leave the check to its validation
        return
    known = {*typing.get_args(spdx.LicenseId), *typing.get_args(spdx.DeprecatedLicenseId)}
    if license_id in known:
        return
    close = [k for k in known if k.lower() == license_id.lower()]
    hint = f"did you mean {close[0]}?" if close else "use e.g. CC-BY-4.0, CC0-1.0, MIT or BSD-3-Clause"
    raise PackageError(f"{license_id!r} is not an SPDX license identifier; {hint}")


def _plain(value: Any) -> Any:
    """A YAML-safe copy of metadata (tuples, NumPy scalars and the like as plain JSON types)."""
    return json.loads(json.dumps(value, default=_to_json))


def _rdf(
    meta: ModelMetadata,
    arch: str,
    spec: InputSpec,
    norm: Normalization | None,
    rules: list[tuple[int, int]],
    *,
    name: str,
    description: str,
    authors: list[str],
    license: str,
    format_version: str,
) -> dict[str, Any]:
    """The bioimage.io model description (``rdf.yaml``) of a package, its files named relative to it."""
    axes = ["z", "y", "x"] if spec.model_ndim == 3 else ["y", "x"]
    half = spec.slices // 2
    channels = [f"z{o:+d}" for o in range(-half, half + 1)] if spec.mode == "2.5d" else ["raw"]
    label = ARCH_LABELS[arch]
    return {
        "format_version": format_version,
        "type": "model",
        "name": name,
        "description": description,
        "authors": [{"name": a} for a in authors],
        "cite": [CITATIONS[arch]],
        "license": license,
        "tags": [
            "napari-msd",
            "napari",
            "electron-microscopy",
            "semantic-segmentation",
            "pytorch",
            "3d" if spec.model_ndim == 3 else "2d",
            "unet" if arch != "msd" else "mixed-scale-dense",
        ],
        "documentation": {"source": README},
        "covers": [{"source": COVER}],
        "inputs": [
            {
                "id": INPUT_ID,
                "description": "raw image, normalised by the preprocessing"
                + (f"; {spec.slices} consecutive z slices as channels, the middle one segmented" if half else ""),
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": channels},
                    *[{"type": "space", "id": a, "size": {"min": lo, "step": st}} for a, (lo, st) in zip(axes, rules)],
                ],
                "test_tensor": {"source": TEST_INPUT},
                "sample_tensor": {"source": SAMPLE_INPUT},
                "data": {"type": "float32"},
                "preprocessing": _preprocessing(norm),
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": "class probabilities (softmax over the channel axis)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": list(meta.class_names)},
                    *[{"type": "space", "id": a, "size": {"tensor_id": INPUT_ID, "axis_id": a}} for a in axes],
                ],
                "test_tensor": {"source": TEST_OUTPUT},
                "sample_tensor": {"source": SAMPLE_OUTPUT},
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}],
            }
        ],
        "weights": {
            "torchscript": {
                "source": WEIGHTS_FILE,
                "pytorch_version": torch.__version__.split("+")[0],
                "comment": f"TorchScript of napari-msd's {label} (exported by napari-msd {__version__})",
            }
        },
        "attachments": [{"source": MODEL_ATTACHMENT}],
        "config": {
            CONFIG_KEY: {
                "model_file": MODEL_ATTACHMENT,
                "napari_msd_version": __version__,
                "arch": arch,
                "config": _plain(meta.config),
                "input": spec.to_dict(),
                "normalization": _plain(meta.normalization),
                "class_names": list(meta.class_names),
                "class_colors": list(meta.class_colors),
                "receptive_field": meta.receptive_field,
                "effective_halo": meta.effective_halo,
            }
        },
    }


def export_package(
    source: str | os.PathLike[str] | tuple[nn.Module, ModelMetadata],
    out_zip: str | os.PathLike[str],
    *,
    test_image: Any = None,
    overwrite: bool = False,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] | None = None,
    license: str = DEFAULT_LICENSE,
) -> Path:
    """Write a model version as a bioimage.io model package to ``out_zip`` (see the module docstring).

    ``source`` is a napari-msd model file (or package) or ``(model, metadata)``; ``test_image`` (an array or an
    image path, YX or ZYX) is the image to cut the test input from, ideally the one the model was trained on;
    ``authors`` are names (default: a placeholder), ``license`` an SPDX identifier. The package is written
    atomically and an existing ``out_zip`` is replaced only with ``overwrite``. Returns the path written.

    Every bad input raises :class:`PackageError` (a :class:`~napari_msd.errors.NapariMsdError`) with one line;
    a bad model file raises :class:`~napari_msd.io.model_file.ModelFileError`, a bad image path
    :class:`~napari_msd.io.images.ImageReadError`.
    """
    out = _check_target(out_zip, overwrite)
    license_id = str(license).strip()
    if not license_id:
        raise PackageError("license must be an SPDX identifier such as CC-BY-4.0 or MIT")
    author_names = [str(a).strip() for a in (authors or [DEFAULT_AUTHOR]) if str(a).strip()]
    if not author_names or any("/" in a for a in author_names):
        raise PackageError("authors must be names without '/' (e.g. 'Jane Doe'); give at least one")
    model, meta, original = _resolve(source)
    arch, spec, norm = _check_model(model, meta)
    label = ARCH_LABELS[arch]
    name = _clean_name(name or f"napari-msd {label} {spec.mode.upper()} {' '.join(meta.class_names)}")
    description = description or (
        f"{label} network trained with napari-msd from painted strokes: {len(meta.class_names)}-class semantic "
        f"segmentation ({', '.join(meta.class_names)}) of {_describe_mode(spec)} electron-microscopy images; "
        "outputs class probabilities." + (f" Architecture: {ARCH_PAPERS[arch]}." if arch in ARCH_PAPERS else "")
    )
    if len(description) > 1024:
        raise PackageError(f"the description has {len(description)} characters; bioimage.io allows at most 1024")
    spec_module = _bioimageio_spec()
    _check_license(license_id)
    import yaml  # PyYAML, a dependency of dask

    model = copy.deepcopy(model).to("cpu").eval()
    x = _test_input(_open_test_image(test_image), model, spec, norm)
    logits, probabilities = _predict(model, x, norm)
    scripted = script_network(model)
    _check_script(scripted, logits, x, norm, arch)
    rdf = _rdf(
        meta,
        arch,
        spec,
        norm,
        _size_rules(model, spec),
        name=name,
        description=description,
        authors=author_names,
        license=license_id,
        format_version=spec_module.model.v0_5.ModelDescr.implemented_format_version,
    )
    with tempfile.TemporaryDirectory(prefix="napari-msd-bioimageio-") as tmp:
        folder = Path(tmp)
        scripted.save(str(folder / WEIGHTS_FILE))
        np.save(folder / TEST_INPUT, x[None])
        np.save(folder / TEST_OUTPUT, probabilities.astype(np.float32))
        if original is not None:
            (folder / MODEL_ATTACHMENT).write_bytes(original)
        else:
            save_model(folder / MODEL_ATTACHMENT, model, meta)
        (folder / README).write_text(_readme(meta, spec, norm, name), encoding="utf-8")
        _write_images(folder, x, probabilities, meta, spec)
        (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False), encoding="utf-8")
        tmp_zip = out.with_name(f".{out.stem}.{secrets.token_hex(4)}.tmp.zip")
        try:
            _package(spec_module, folder / "rdf.yaml", tmp_zip)
            os.replace(tmp_zip, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_zip)
            raise
    return out


def _package(spec_module: Any, rdf: Path, target: Path) -> None:
    """Validate the description (offline: it names no URLs) and zip it with its files into ``target``."""
    with spec_module.ValidationContext(root=rdf.parent, perform_io_checks=True, log_warnings=False):
        try:
            spec_module.save_bioimageio_package(rdf, output_path=target)
        except (ValueError, OSError) as err:
            reason = one_line(err)
            reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
            raise PackageError(f"bioimage.io refused the package: {reason}") from None
