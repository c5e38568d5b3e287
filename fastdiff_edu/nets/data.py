"""Training data for the small networks: scikit-learn's 8x8 digits and the 2D toy sets.

Design choices:

* **Digits** come from ``sklearn.datasets.load_digits`` (1,797 images shipped inside
  scikit-learn: nothing is downloaded). Pixels are integers 0..16; we map them affinely to
  [-1, 1] (``x / 8 - 1``), the range DDPM-style models assume, and keep the 1x8x8 image shape.
* **One fixed split** (a seeded permutation, 20 % held out, i.e. 1,438 train / 359 held out)
  is used by everything: the diffusion models train on ``"train"`` only, and the held-out
  digits give the floor of the FD-digits metric (real digits the models never saw).
* **2D sets** are fixed point clouds drawn once with a seed (``toy2d``): a training run then
  sees the same finite data set whatever its length, like an image data set.
"""
from __future__ import annotations

import torch

from .. import problems

Tensor = torch.Tensor

__all__ = ["digits", "digits_split", "toy2d", "TOY2D", "SPLIT_SEED", "HELDOUT_FRACTION", "load_data"]

SPLIT_SEED = 0
HELDOUT_FRACTION = 0.2


def _ring(n: int, generator: torch.Generator) -> Tensor:
    return problems.ring2d().sample(n, generator=generator)


#: 2D data sets a model can be trained on: problems' toy sets plus the ring of 8 Gaussians
TOY2D = {**problems.TOY_SETS, "ring": _ring}


def digits() -> tuple[Tensor, Tensor]:
    """All 1,797 digits as float32 images of shape (N, 1, 8, 8) in [-1, 1], and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def digits_split(split: str = "train") -> tuple[Tensor, Tensor]:
    """``"train"`` (1,438 images), ``"heldout"`` (359) or ``"all"``: images in [-1, 1], labels.

    The split is a fixed permutation (seed ``SPLIT_SEED``), the same in every process.
    """
    images, labels = digits()
    if split == "all":
        return images, labels
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_held = round(HELDOUT_FRACTION * len(images))
    if split == "heldout":
        index = order[:n_held]
    elif split == "train":
        index = order[n_held:]
    else:
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    index = index.sort().values
    return images[index], labels[index]


def toy2d(name: str, n: int = 10_000, seed: int = 0) -> Tensor:
    """A fixed 2D training set of ``n`` float32 points (``moons``, ``ring``, ``swiss_roll``,
    ``checkerboard``), drawn with ``seed``."""
    if name not in TOY2D:
        raise ValueError(f"unknown 2D set {name!r}; choose one of {sorted(TOY2D)}")
    return TOY2D[name](n, torch.Generator().manual_seed(seed)).to(torch.float32)


def load_data(name: str) -> Tensor:
    """The training tensor for ``--data name``: digits' train split or a 2D set."""
    if name == "digits":
        return digits_split("train")[0]
    return toy2d(name)
