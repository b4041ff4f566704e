"""Class-prior correction after training on strokes (Saerens, Latinne & Decaestecker, Neural Comput. 2002).

People paint every class about equally, so a network trained on strokes learns a nearly uniform class
prior, while in the image one class may cover 20% of the pixels and another 80%. On unlabeled pixels
the EM algorithm of Saerens et al. estimates the image's class prior from the network's own
posteriors; the correction ``log(prior / training prior)`` is then added to the output layer's bias,
so the saved model predicts with the image's prior and no prediction code changes.
"""

from __future__ import annotations

import numpy as np
import torch


def estimate_prior(probabilities: np.ndarray, train_prior: np.ndarray, iterations: int = 200,
                   tol: float = 1e-6) -> np.ndarray:
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


def shift_output_bias(model: torch.nn.Module, prior: np.ndarray, train_prior: np.ndarray,
                      floor: float = 1e-3) -> np.ndarray:
    """Add ``log(prior / train_prior)`` to the output bias; returns the shift (classes below ``floor`` are kept
    at ``floor``, so a class never becomes impossible)."""
    prior = np.maximum(np.asarray(prior, np.float64), floor)
    shift = np.log(prior / np.asarray(train_prior, np.float64))
    with torch.no_grad():
        bias = output_bias(model)
        bias += torch.as_tensor(shift, dtype=bias.dtype, device=bias.device)
    return shift
