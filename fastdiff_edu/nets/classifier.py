"""A small digit classifier whose penultimate features define FD-digits.

``python -m fastdiff_edu.nets.classifier`` trains it on the training split of the digits (the
same images the diffusion models see) and ships it as ``weights/digits-classifier``.

Design choices: a three-convolution CNN (8x8 -> 4x4 -> 2x2) and a 64-unit penultimate layer.
64 features rather than, say, 512: a Frechet distance needs a covariance, and with a few hundred
held-out digits a 64x64 covariance is still estimated reasonably (its bias shrinks like
dim^2 / n). Training is Adam over shuffled minibatches with a fixed seed, with
light Gaussian pixel noise (std 0.1) as augmentation, so that features of slightly imperfect
generated digits are not thrown far off by tiny artefacts; no dropout, so it is deterministic.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch
from torch import nn

from .. import weights
from .data import digits_split

Tensor = torch.Tensor

__all__ = ["DigitClassifier", "train_classifier", "load_classifier", "NAME"]

NAME = "digits-classifier"


class DigitClassifier(nn.Module):
    def __init__(self, width: int = 32, features: int = 64):
        super().__init__()
        self.config = dict(width=width, features=features)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1, stride=2), nn.SiLU(),          # 4x4
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.SiLU(),      # 2x2
            nn.Flatten(), nn.Linear(2 * w * 4, features), nn.SiLU(),
        )
        self.head = nn.Linear(features, 10)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate activations (batch, features) for images (batch, 1, 8, 8) in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_classifier(epochs: int = 40, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     noise: float = 0.1) -> tuple[DigitClassifier, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = digits_split("train")
    xh, yh = digits_split("heldout")
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb = x[idx] + noise * torch.randn(x[idx].shape, generator=gen)
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        acc_train = (net(x).argmax(1) == y).float().mean().item()
        acc_held = (net(xh).argmax(1) == yh).float().mean().item()
    info = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "noise": noise,
            "train_accuracy": round(acc_train, 4), "heldout_accuracy": round(acc_held, 4),
            "train_seconds": round(seconds, 1)}
    return net, info


def load_classifier(device="cpu") -> DigitClassifier:
    """The shipped classifier (hash-checked), in eval mode without gradients."""
    tensors, card = weights.load(NAME, device=device)
    net = DigitClassifier(**card["network_config"])
    net.load_state_dict(tensors)
    return net.to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m fastdiff_edu.nets.classifier", description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", default=str(weights.SHIPPED_DIR / f"{NAME}.safetensors"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, info = train_classifier(epochs=args.epochs, seed=args.seed)
    card = {"model_type": "classifier", "name": NAME, "data": "digits (train split)",
            "network": "DigitClassifier", "network_config": net.config,
            "parameters": sum(p.numel() for p in net.parameters()), **info,
            "command": ("python -m fastdiff_edu.nets.classifier " + shlex.join(argv)).strip(),
            "torch_version": torch.__version__}
    weights.save(args.save, net.state_dict(), card)
    print(f"trained the digit classifier in {info['train_seconds']} s: accuracy {info['train_accuracy']:.3f} "
          f"(train), {info['heldout_accuracy']:.3f} (held out); saved {args.save}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
