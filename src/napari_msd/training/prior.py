"""Class-prior correction after training on strokes (Saerens, Latinne & Decaestecker, Neural Comput. 2002).

People paint every class about equally, so a network trained on strokes learns a nearly uniform class
prior, while in the image one class may cover 20% of the pixels and another 80%. On unlabeled pixels
the EM algorithm of Saerens et al. estimates the image's class prior from the network's own
posteriors; the correction ``log(prior / training prior)`` is then added to the output layer's bias,
so the saved model predicts with the image's prior and no prediction code changes. Fine-tuning such a model
first takes the correction back (:func:`undo_prior_shift`), or the retrained model would carry it twice. An estimate
that would all but erase a painted class is wrong in its size, not always in its direction (:func:`erased_classes`):
the engine then applies the largest tenth of it that erases none (:func:`safe_scale`), and leaves it out only where no
tenth is safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# A prior correction may shrink a painted class's predicted area, but not to less than this share of it. Strokes
# make a rare class look a few times more frequent than it is (VNC, stroke seed 0, 5 minutes: the correction kept
# 0.35 of the synapse pixels, 0.5 of the mitochondrion pixels), while an EM estimate from miscalibrated posteriors
# can drive a painted class to nothing (VNC, 2400 steps: mitochondria IoU 0.32 -> 0.02).
ERASE_KEEP = 0.1
ERASE_MIN_SHARE = 0.002  # classes predicted on fewer pixels than this before the correction are not judged


def estimate_prior(
    probabilities: np.ndarray, train_prior: np.ndarray, iterations: int = 200, tol: float = 1e-6
) -> np.ndarray:
    """EM estimate of the class prior of pixels whose posteriors ``(K, N)`` were made under ``train_prior``."""
    p = np.asarray(probabilities, np.float64)
    train_prior = np.asarray(train_prior, np.float64)
    prior = train_prior.copy()
    for _ in range(iterations):
        w = (prior / train_prior)[:, None] * p
        w /= np.maximum(w.sum(axis=0, keepdims=True), 1e-300)
        new = w.mean(axis=1)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def erased_classes(
    probabilities: np.ndarray,
    shift: np.ndarray,
    painted: Sequence[int],
    keep: float | None = None,
    min_share: float | None = None,
) -> list[int]:
    """The painted classes (1-based) that adding ``shift`` to the logits would all but erase from pixels whose
    posteriors are ``(K, N)``: predicted (argmax) on at least ``min_share`` of them before, and on less than ``keep``
    times that share after (defaults: ``ERASE_MIN_SHARE``, ``ERASE_KEEP``). A person painted the class, so it is in
    the image: such an estimate is wrong."""
    keep = ERASE_KEEP if keep is None else keep
    min_share = ERASE_MIN_SHARE if min_share is None else min_share
    p = np.asarray(probabilities, np.float64)
    k, n = p.shape
    before = np.bincount(p.argmax(0), minlength=k) / n
    after_argmax = (np.log(np.maximum(p, 1e-300)) + np.asarray(shift, np.float64)[:, None]).argmax(0)
    after = np.bincount(after_argmax, minlength=k) / n
    return [
        int(c)
        for c in sorted(set(painted))
        if 1 <= c <= k and before[c - 1] >= min_share and after[c - 1] < keep * before[c - 1]
    ]


def safe_scale(probabilities: np.ndarray, shift: np.ndarray, painted: Sequence[int], tenths: int = 10) -> float:
    """The largest share of ``shift`` (1, 0.9, ..., 0.1; 0 when none) whose addition to the logits erases no painted
    class from pixels whose posteriors are ``(K, N)`` (:func:`erased_classes`). On the VNC volume at 475 steps the
    full correction would have erased synapses (mean class IoU 0.451 -> 0.426), 0.7 of it gave 0.480 (README)."""
    shift = np.asarray(shift, np.float64)
    for t in range(tenths, 0, -1):
        if not erased_classes(probabilities, t / tenths * shift, painted):
            return t / tenths
    return 0.0


def scaled_prior(shift: np.ndarray, train_prior: np.ndarray) -> np.ndarray:
    """The class prior that ``shift`` (added to the logits of a network trained under ``train_prior``) stands for:
    ``train_prior * exp(shift)``, normalized. Recorded as a model's ``class_prior``, :func:`undo_prior_shift` takes
    the shift back exactly (up to a constant, to which softmax is blind)."""
    prior = np.asarray(train_prior, np.float64) * np.exp(np.asarray(shift, np.float64))
    return prior / prior.sum()


def output_bias(model: torch.nn.Module) -> torch.nn.Parameter:
    """The bias of the network's final 1x1 layer (MS-D's ``head_bias``, a U-Net's ``head.bias``)."""
    bias = getattr(model, "head_bias", None)
    if bias is None:
        bias = getattr(getattr(model, "head", None), "bias", None)
    if bias is None:
        raise TypeError(f"{type(model).__name__} has no output bias to correct")
    return bias


def shift_output_bias(
    model: torch.nn.Module, prior: np.ndarray, train_prior: np.ndarray, floor: float = 1e-3
) -> np.ndarray:
    """Add ``log(prior / train_prior)`` to the output bias; returns the shift (classes below ``floor`` are kept
    at ``floor``, so a class never becomes impossible)."""
    prior = np.maximum(np.asarray(prior, np.float64), floor)
    shift = np.log(prior / np.asarray(train_prior, np.float64))
    with torch.no_grad():
        bias = output_bias(model)
        bias.add_(torch.as_tensor(shift, dtype=bias.dtype, device=bias.device))
    return shift


def undo_prior_shift(
    model: torch.nn.Module, provenance: dict, class_names: list[str], floor: float = 1e-3
) -> np.ndarray | None:
    """Take back the correction recorded in a model's ``provenance["class_prior"]`` (see :func:`shift_output_bias`,
    from a uniform training prior), so fine-tuning starts from the network as trained: fine-tuned on
    class-balanced strokes and corrected again afterwards, the shift would otherwise count twice. Returns the
    shift removed, or None when the model carries none."""
    recorded = (provenance or {}).get("class_prior")
    if not recorded or any(name not in recorded for name in class_names):
        return None
    prior = np.maximum(np.array([float(recorded[name]) for name in class_names]), floor)
    shift = np.log(prior * len(class_names))  # log(prior / uniform)
    with torch.no_grad():
        bias = output_bias(model)
        bias.sub_(torch.as_tensor(shift, dtype=bias.dtype, device=bias.device))
    return shift
