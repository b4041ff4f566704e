"""Shared by the prediction-output tests: a small job, its deterministic truth and a block writer."""

from __future__ import annotations

import numpy as np

from napari_msd.io.job import JobSpec
from napari_msd.io.outputs import PredictionOutput

NAMES = ["background", "membrane", "mitochondrion"]
COLORS = ["#000000", "#ff0000", "#00ff80"]


def make_job(**kw) -> JobSpec:
    base = dict(
        model_sha256="ab" * 32,
        input="raw.zarr::volume",
        input_shape=(5, 20, 27),
        block_shape=(4, 8, 8),
        halo=3,
        n_classes=3,
        class_names=NAMES,
        class_colors=COLORS,
        probabilities="uint8",
        output_format="zarr",
    )
    return JobSpec(**{**base, **kw})


def job_truth(job: JobSpec) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic labels (1..K) and float32 probabilities (K, *shape) for a job's whole output."""
    grids = np.indices(job.input_shape, dtype=np.float32)
    logits = np.stack([np.sin(0.3 * (k + 1) * grids.sum(0) + k) for k in range(job.n_classes)])
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return (probs.argmax(0) + 1).astype(np.uint8), probs.astype(np.float32)


def write_blocks(out: PredictionOutput, blocks, truth=None) -> None:
    labels, probs = truth if truth is not None else job_truth(out.job)
    for idx in blocks:
        region = out.job.block_slices(idx)
        out.write_block(
            idx,
            region,
            labels=labels[region] if out.job.labels else None,
            probabilities=probs[(slice(None), *region)] if out.job.probabilities != "none" else None,
        )
