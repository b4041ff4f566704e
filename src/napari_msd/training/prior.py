"""Class-prior correction after training on strokes (Saerens, Latinne & Decaestecker, Neural Comput. 2002).

People paint every class about equally, so a network trained on strokes learns a nearly uniform class
prior, while in the image one class may cover 20% of the pixels and another 80%. On unlabeled pixels
the EM algorithm of Saerens et al. estimates the image's class prior from the network's own
posteriors; the correction ``log(prior / training prior)`` is then added to the output layer's bias,
so the saved model predicts with the image's prior and no prediction code changes. Fine-tuning such a model
first takes the correction back (:func:`undo_prior_shift`), or the retrained model would carry it twice.
"""

from __future__ import annotations

import numpy as np
import torch


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
