"""Physical pixel size: :class:`Scale`, and reading it from OME-Zarr metadata (no napari, no Qt)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ZARR_SEPARATOR = "::"  # as in napari_msd.io.images: vol.zarr::group/array
UNIT_SYMBOLS = {
    "angstrom": "A",
    "nanometer": "nm",
    "micrometer": "um",
    "micron": "um",
    "µm": "um",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
}


@dataclass(frozen=True)
class Scale:
    """The size of a pixel along each axis (ZYX or YX) in ``unit`` (e.g. ``"nm"``; ``""`` when unknown)."""

    pixel_size: tuple[float, ...]
    unit: str = ""

    def __post_init__(self) -> None:
        sizes = tuple(float(s) for s in self.pixel_size)
        if len(sizes) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in sizes):
            raise ValueError(f"a scale needs 2 or 3 positive pixel sizes (ZYX or YX), got {self.pixel_size!r}")
        object.__setattr__(self, "pixel_size", sizes)
        object.__setattr__(self, "unit", unit_symbol(self.unit))

    @property
    def ndim(self) -> int:
        return len(self.pixel_size)

    @property
    def isotropic(self) -> bool:
        return all(math.isclose(s, self.pixel_size[-1], rel_tol=1e-9) for s in self.pixel_size)

    @property
    def pixel_volume(self) -> float:
        """Area (2D) or volume (3D) of one pixel."""
        return math.prod(self.pixel_size)

    def suffix(self, power: int = 1) -> str:
        """Column-name suffix of a quantity in this unit to ``power``: ``"_nm"``, ``"_nm3"``; ``"_phys"`` without
        a unit."""
        if not self.unit:
            return "_phys"
        return f"_{self.unit}{power if power != 1 else ''}"

    def describe(self) -> str:
        return " x ".join(f"{s:g}" for s in self.pixel_size) + (f" {self.unit}" if self.unit else "")


def unit_symbol(unit: str | None) -> str:
    """A short unit symbol for column names (``"nanometer"`` -> ``"nm"``)."""
    text = (unit or "").strip()
    return UNIT_SYMBOLS.get(text.lower(), text)


def ome_scale(spec: str | os.PathLike[str], ndim: int) -> Scale | None:
    """The level-0 pixel size of an OME-Zarr image (``vol.ome.zarr``, ``vol.zarr::group``, a group's dataset
    path), from its ``multiscales`` scale transforms and axis units; ``None`` when there is none, when it is
    all ones without a unit (e.g. napari-msd's prediction outputs), or when it cannot be read."""
    try:
        found = _read_ome_scale(os.fspath(spec), ndim)
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None
    if found is None:
        return None
    sizes, unit = found
    if not unit and all(s == 1.0 for s in sizes):
        return None
    try:
        return Scale(tuple(sizes), unit)
    except ValueError:
        return None


def _read_ome_scale(spec: str, ndim: int) -> tuple[list[float], str] | None:
    root_text, _, name = spec.partition(ZARR_SEPARATOR)
    path = Path(os.path.expanduser(root_text)) / name.strip("/")
    dataset = None
    attrs = _attributes(path)
    if attrs is None or _multiscales(attrs) is None:  # an array of a multiscale group: look one level up
        dataset, path = path.name, path.parent
        attrs = _attributes(path)
    if attrs is None:
        return None
    multiscales = _multiscales(attrs)
    if multiscales is None:
        return None
    image = multiscales[0]
    datasets = image["datasets"]
    chosen = datasets[0] if dataset is None else next((d for d in datasets if d.get("path") == dataset), None)
    if chosen is None:
        return None
    axes = image.get("axes") or []
    n_axes = len(axes) or None
    scale = _scale_of(chosen.get("coordinateTransformations"), n_axes)
    top = _scale_of(image.get("coordinateTransformations"), n_axes)
    if scale is None:
        return None
    if top is not None and len(top) == len(scale):
        scale = [a * b for a, b in zip(scale, top)]
    spatial = [i for i, a in enumerate(axes) if isinstance(a, dict) and a.get("type") == "space"]
    picked = spatial[-ndim:] if len(spatial) >= ndim else list(range(len(scale)))[-ndim:]
    if len(picked) != ndim:
        return None
    units = {str(axes[i].get("unit", "")) for i in picked if i < len(axes) and isinstance(axes[i], dict)}
    unit = units.pop() if len(units) == 1 else ""
    return [float(scale[i]) for i in picked], unit


def _attributes(path: Path) -> dict[str, Any] | None:
    """A zarr node's attributes (v3 ``zarr.json`` or v2 ``.zattrs``), read as JSON without opening arrays."""
    v3 = path / "zarr.json"
    if v3.is_file():
        meta = json.loads(v3.read_text(encoding="utf-8"))
        attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
        return attrs if isinstance(attrs, dict) else None
    v2 = path / ".zattrs"
    if v2.is_file():
        attrs = json.loads(v2.read_text(encoding="utf-8"))
        return attrs if isinstance(attrs, dict) else None
    return None


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    return found if isinstance(found, list) and found and isinstance(found[0], dict) else None


def _scale_of(transforms: Any, n_axes: int | None) -> list[float] | None:
    if not isinstance(transforms, Sequence):
        return None
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale" and isinstance(t.get("scale"), list):
            values = [float(v) for v in t["scale"]]
            return values if n_axes is None or len(values) == n_axes else None
    return None
