"""FD-digits: a Frechet distance for generated 8x8 digits, and their class histogram.

FID (Heusel et al. 2017) compares Gaussian fits of Inception features; Inception cannot see
8x8 images, so we use the penultimate layer (64 features) of a small classifier trained on the
same digits (:mod:`.classifier`) and :func:`fastdiff_edu.metrics.frechet_distance`. The
reference set is the *training* split (the images the diffusion models learned from).

Read every number against the floor, ``fd_digits(held-out real digits)``: the held-out digits
are real but unseen. Like FID, the value is biased upwards for small sample sizes: 359 of the
*training* digits themselves score 12-16 and 500 of them 5-10, depending on the subset (against 0
for all 1,438),
so compare values computed from the same number of samples -- 359, the size of the held-out
set, for comparisons with the floor. And like FID, it rewards a model that reproduces its
training images, which a model trained for hundreds of epochs on 1,438 digits partly does.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .. import metrics
from .data import digits_split

Tensor = torch.Tensor

__all__ = ["features", "fd_digits", "class_histogram", "fd_floor"]


@lru_cache(maxsize=1)
def _classifier():
    from .classifier import load_classifier  # here, so `python -m fastdiff_edu.nets.classifier` runs cleanly

    return load_classifier("cpu")


@lru_cache(maxsize=2)
def _reference_features(split: str) -> Tensor:
    return features(digits_split(split)[0])


def _as_images(samples: Tensor) -> Tensor:
    x = samples.detach().to("cpu", torch.float32)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 1, 8, 8)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits samples have shape (n, 1, 8, 8) (or (n, 64)); got {tuple(samples.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the samples contain NaN or inf")
    return x.clamp(-1.0, 1.0)


def features(samples: Tensor, batch: int = 1024) -> Tensor:
    """The classifier's penultimate features (n, 64) of images in [-1, 1] (clamped first,
    as a picture would be when saved)."""
    x = _as_images(samples)
    net = _classifier()
    with torch.no_grad():
        return torch.cat([net.features(x[i:i + batch]) for i in range(0, len(x), batch)])


def fd_digits(samples: Tensor, reference: str = "train") -> float:
    """Frechet distance between the features of ``samples`` and of the ``reference`` split
    (``"train"`` by default). Lower is better; see :func:`fd_floor` for the real-data floor."""
    if len(samples) < 2:
        raise ValueError("fd_digits needs at least two samples (a covariance)")
    return metrics.frechet_distance(features(samples).double(), _reference_features(reference).double())


def fd_floor() -> float:
    """FD-digits of the 359 held-out real digits against the training digits."""
    return fd_digits(digits_split("heldout")[0])


def class_histogram(samples: Tensor) -> Tensor:
    """Fraction of ``samples`` the classifier assigns to each digit 0..9 (a float64 tensor of 10)."""
    with torch.no_grad():
        labels = _classifier()(_as_images(samples)).argmax(1)
    return torch.bincount(labels, minlength=10).double() / len(labels)
