"""OME-NGFF 0.5 metadata of OME-Zarr prediction outputs, written with ome-zarr-py (no napari, no Qt).

:func:`create_ome` lays out the level-0 images (probabilities with their omero channels, labels as an
image-label with class names and colours); :func:`write_pyramid_metadata` records a group's pyramid levels.
"""

from __future__ import annotations

from typing import Any

from .job import JobSpec, spatial_names

LABELS_NAME = "prediction"


def create_ome(root: Any, job: JobSpec) -> None:
    """Create the level-0 arrays of an OME-Zarr output in ``root`` and write their OME-NGFF 0.5 metadata.

    With probabilities the root is the probabilities image and the labels a label image under
    ``labels/prediction``; without them the root is the label image itself.
    """
    from ome_zarr.format import FormatV05

    add_metadata, write_label_metadata, write_multiscales_metadata = _ome_writer(
        "add_metadata", "write_label_metadata", "write_multiscales_metadata"
    )
    fmt = FormatV05()
    names = spatial_names(job)
    level0 = [{"path": "s0", "coordinateTransformations": _transforms((1,) * job.ndim, False, "")}]
    colors = [{"label-value": i + 1, "rgba": _rgba(c)} for i, c in enumerate(job.class_colors)]
    properties = [{"label-value": i + 1, "class": n} for i, n in enumerate(job.class_names)]
    if job.probabilities != "none":
        root.create_array(
            "s0",
            shape=(job.n_classes, *job.input_shape),
            chunks=(1, *job.block_shape),
            dtype=job.probabilities_dtype,
            fill_value=0,
            dimension_names=("c", *names),
        )
        top = 255 if job.probabilities == "uint8" else 1.0
        omero = {
            "channels": [
                {
                    "label": n,
                    "color": c.lstrip("#"),
                    "active": True,
                    "window": {"min": 0, "max": top, "start": 0, "end": top},
                }
                for n, c in zip(job.class_names, job.class_colors)
            ],
            "rdefs": {"model": "color"},
        }
        datasets = [{**level0[0], "coordinateTransformations": _transforms((1,) * job.ndim, True, "")}]
        write_multiscales_metadata(
            root, datasets=datasets, fmt=fmt, axes=_axes(job, True), name="probabilities", metadata={"omero": omero}
        )
        if job.labels:
            group = root.require_group("labels").require_group(LABELS_NAME)
            group.create_array(
                "s0",
                shape=job.input_shape,
                chunks=job.block_shape,
                dtype=job.labels_dtype,
                fill_value=0,
                dimension_names=names,
            )
            write_multiscales_metadata(group, datasets=level0, fmt=fmt, axes=_axes(job, False), name=LABELS_NAME)
            write_label_metadata(
                root["labels"], LABELS_NAME, colors=colors, properties=properties, fmt=fmt, source={"image": "../../"}
            )
            add_metadata(root["labels"], {"version": fmt.version}, fmt=fmt)  # ome-zarr-py 0.18 leaves it out
    else:  # labels only: the root is the label image
        root.create_array(
            "s0",
            shape=job.input_shape,
            chunks=job.block_shape,
            dtype=job.labels_dtype,
            fill_value=0,
            dimension_names=names,
        )
        write_multiscales_metadata(root, datasets=level0, fmt=fmt, axes=_axes(job, False), name=LABELS_NAME)
        add_metadata(
            root, {"image-label": {"colors": colors, "properties": properties, "version": fmt.version}}, fmt=fmt
        )


def write_pyramid_metadata(
    group: Any, job: JobSpec, factors: list[tuple[int, ...]], channels: bool, method: str
) -> None:
    """Write the multiscales metadata of one pyramid: level ``n`` is ``s<n>``, ``factors[n]`` times level 0.

    ``channels`` marks the probabilities (a leading ``c`` axis), ``method`` is ``"mean"`` or ``"stride"``.
    """
    from ome_zarr.format import FormatV05

    (write_multiscales_metadata,) = _ome_writer("write_multiscales_metadata")
    datasets = [
        {"path": f"s{level}", "coordinateTransformations": _transforms(factor, channels, method)}
        for level, factor in enumerate(factors)
    ]
    description = (
        "mean of each 2^n cell, edges replicated" if method == "mean" else "every 2^n-th pixel (nearest, no mode)"
    )
    write_multiscales_metadata(
        group,
        datasets=datasets,
        fmt=FormatV05(),
        axes=_axes(job, channels),
        name=LABELS_NAME if not channels else "probabilities",
        metadata={"method": f"napari_msd: {description}"},
    )


def _ome_writer(*names: str) -> tuple[Any, ...]:
    """Functions of ``ome_zarr.writer``, imported without its import-time DeprecationWarning (``Scaler``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr import writer
    return tuple(getattr(writer, n) for n in names)


def _axes(job: JobSpec, channels: bool) -> list[dict[str, str]]:
    spatial = [{"name": n, "type": "space"} for n in spatial_names(job)]
    return ([{"name": "c", "type": "channel"}] if channels else []) + spatial


def _transforms(factor: tuple[int, ...], channels: bool, method: str) -> list[dict[str, Any]]:
    """Scale (and, for means, the half-cell shift of the cell centre) of one pyramid level."""
    scale = [float(f) for f in factor]
    shift = [(f - 1) / 2 if method == "mean" else 0.0 for f in factor]
    if channels:
        scale, shift = [1.0, *scale], [0.0, *shift]
    out: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if any(shift):
        out.append({"type": "translation", "translation": shift})
    return out


def _rgba(color: str) -> list[int]:
    return [int(color[i : i + 2], 16) for i in (1, 3, 5)] + [255]
