"""The one prediction driver: a predictor's blocks, each handed to sinks as it finishes.

Every way napari-msd predicts runs through :func:`stream`: :meth:`Predictor.run <.predictor.Predictor.run>`
(:func:`write_blocks`), batch apply (:mod:`.batch`, a :class:`~napari_msd.io.outputs.PredictionOutput` as sink) and
the Predict dock (labels, uncertainty and per-class probability layers as sinks). A sink is any callable taking a
:class:`~.predictor.BlockDone`; the ones here write into arrays (numpy, zarr, or anything that supports slice
assignment) in the block's output region.

Example::

    sinks = [labels_into(labels), UncertaintyInto(review, "margin")]
    for done in stream(predictor, image, sinks, first=view):
        show(done.block.out)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base.quantise import quantise
from .uncertainty import MEMBER_MEASURES, to_uint8, uncertainty

if TYPE_CHECKING:
    from .predictor import BlockDone

BlockSink = Callable[["BlockDone"], Any]


def stream(source: Any, image: Any, sinks: Sequence[BlockSink] = (), **blocks_kwargs: Any) -> Iterator[BlockDone]:
    """``source.blocks(image, **blocks_kwargs)`` (a Predictor or anything with its ``blocks``), every block handed
    to each sink in order before it is yielded: a caller sees a block only once all its outputs hold it."""
    for done in source.blocks(image, **blocks_kwargs):
        for sink in sinks:
            sink(done)
        yield done


def _probabilities(done: BlockDone) -> np.ndarray:
    if done.probabilities is None:
        raise ValueError("this sink writes probabilities: stream with probabilities=True")
    return done.probabilities


def labels_into(out: Any) -> BlockSink:
    """A sink writing each block's labels into ``out`` (the image's shape)."""

    def write(done: BlockDone) -> None:
        if done.labels is None:
            raise ValueError("this sink writes labels: stream with labels=True")
        out[done.block.out] = done.labels

    return write


def probabilities_into(out: Any) -> BlockSink:
    """A sink writing each block's probabilities into ``out`` (``(K, *image shape)``), in ``out``'s dtype."""

    def write(done: BlockDone) -> None:
        out[(slice(None), *done.block.out)] = quantise(_probabilities(done), out.dtype)

    return write


def class_probabilities_into(outs: Sequence[Any]) -> BlockSink:
    """A sink writing class ``k``'s probability into ``outs[k]`` (one array of the image's shape per class)."""

    def write(done: BlockDone) -> None:
        probabilities = _probabilities(done)
        for k, out in enumerate(outs):
            out[done.block.out] = quantise(probabilities[k], out.dtype)

    return write


class UncertaintyInto:
    """A sink writing each block's uncertainty (:func:`.uncertainty.uncertainty` ``measure``) into ``out`` (the
    image's shape), uint8 0..255; ``latest`` is the last block's, for a caller that also scores regions. The measure
    ``"disagreement"`` (an ensemble's members', :data:`.uncertainty.MEMBER_MEASURES`) is the block's own
    ``disagreement``: stream with ``disagreement=True``."""

    def __init__(self, out: Any, measure: str = "entropy"):
        self.out, self.measure = out, measure
        self.latest: np.ndarray | None = None

    def __call__(self, done: BlockDone) -> None:
        if self.measure in MEMBER_MEASURES:
            if done.disagreement is None:
                raise ValueError(
                    f"the {self.measure} of the members needs an ensemble model, streamed with {self.measure}=True"
                )
            self.latest = to_uint8(done.disagreement)
        else:
            self.latest = to_uint8(uncertainty(_probabilities(done), self.measure))
        self.out[done.block.out] = self.latest


def write_blocks(
    source: Any, image: Any, labels_out: Any = None, probabilities_out: Any = None, **blocks_kwargs: Any
) -> Iterator[BlockDone]:
    """:func:`stream` into ``labels_out`` (the image's shape) and/or ``probabilities_out`` (``(K, *image shape)``;
    uint8 outputs get ``round(p * 255)``, float ones a cast), computing only what is written."""
    shape = tuple(image.shape)
    if labels_out is not None and tuple(labels_out.shape) != shape:
        raise ValueError(f"labels_out has shape {tuple(labels_out.shape)}; it must match the image, {shape}")
    if probabilities_out is not None and tuple(probabilities_out.shape) != (source.n_classes, *shape):
        raise ValueError(
            f"probabilities_out has shape {tuple(probabilities_out.shape)}; it must be "
            f"(classes, *image shape) = {(source.n_classes, *shape)}"
        )
    sinks: list[BlockSink] = []
    if labels_out is not None:
        sinks.append(labels_into(labels_out))
    if probabilities_out is not None:
        sinks.append(probabilities_into(probabilities_out))
    if sinks:  # compute only what is written
        blocks_kwargs.setdefault("labels", labels_out is not None)
        blocks_kwargs.setdefault("probabilities", probabilities_out is not None)
    yield from stream(source, image, sinks, **blocks_kwargs)
