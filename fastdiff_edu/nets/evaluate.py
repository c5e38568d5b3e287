"""Measure the shipped models: ``python -m fastdiff_edu.nets.evaluate``.

Prints FD-digits of ``digits-eps`` samples for a few samplers and NFEs from the *same* noise
(seeded), next to the floor (held-out real digits), and the sliced Wasserstein distance of the
2D models' samples to fresh data (next to the distance between two fresh data sets). The
numbers quoted in the package's tests and report come from this script.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .. import metrics
from ..solvers import sample
from .data import digits_split, toy2d
from .loading import load, shipped_models
from .quality import class_histogram, fd_digits, fd_floor

SOLVERS = ("ddim", "dpm-solver++2m", "heun-edm")
NFES = (5, 10, 20)


def digits_table(n: int = 1000, seed: int = 0, solvers=SOLVERS, nfes=NFES, name: str = "digits-eps") -> dict:
    """{(solver, nfe): FD-digits} for ``n`` samples from the same noise."""
    model = load(name)
    x_T = model.schedule.prior_sample(model.sample_shape(n), generator=torch.Generator().manual_seed(seed))
    table = {}
    for solver in solvers:
        for nfe in nfes:
            try:
                x0, info = sample(model, x_T, solver, nfe=nfe, return_info=True)
            except ValueError as err:  # e.g. a budget below the solver's minimum
                print(f"{solver} at NFE {nfe}: {err}")
                continue
            table[(solver, nfe)] = (fd_digits(x0), info.nfe, class_histogram(x0))
    return table


def toy_distance(name: str, n: int = 2000, nfe: int = 20, solver: str = "dpm-solver++2m", seed: int = 0) -> tuple[float, float]:
    """(SW of model samples to fresh data, SW between two fresh data sets of the same size)."""
    model = load(name)
    x_T = model.schedule.prior_sample(model.sample_shape(n), generator=torch.Generator().manual_seed(seed))
    x0 = sample(model, x_T, solver, nfe=nfe)
    data = model.card["data"]
    return (metrics.sliced_wasserstein(x0, toy2d(data, n, seed=101)),
            metrics.sliced_wasserstein(toy2d(data, n, seed=102), toy2d(data, n, seed=101)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastdiff_edu.nets.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--n", default="359,1000",
                   help="sample counts (comma-separated); 359 = the held-out set, comparable with the floor")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    held = digits_split("heldout")[0]
    print(f"FD-digits floor (359 held-out real digits vs the 1,438 training digits): {fd_floor():.2f}")
    print(f"FD-digits of N(0, I) noise ({len(held)} samples): {fd_digits(torch.randn(held.shape)):.1f}")
    train = digits_split("train")[0]
    for n in map(int, args.n.split(",")):
        if n <= len(train):
            print(f"FD-digits of {n} training digits, a subset of the reference (small-sample bias): "
                  f"{fd_digits(train[:n]):.2f}")
        print(f"digits-eps, {n} samples from the same noise (seed {args.seed}):")
        print(f"{'solver':>16} {'NFE':>4} {'counted':>7} {'FD-digits':>10}  min/max class fraction")
        for (solver, nfe), (fd, counted, hist) in digits_table(n, args.seed).items():
            print(f"{solver:>16} {nfe:>4} {counted:>7} {fd:>10.2f}  {hist.min():.3f}/{hist.max():.3f}")
    for name in shipped_models():
        if name.startswith("digits"):
            continue
        sw, floor = toy_distance(name)
        print(f"{name}: sliced W2 to fresh data {sw:.4f} (two fresh data sets: {floor:.4f}), dpm-solver++2m NFE 20")
    print(f"evaluated in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
