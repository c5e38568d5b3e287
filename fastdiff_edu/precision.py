"""Low-precision inputs: does every sampler survive float16 and bfloat16, and how far does it drift?

The samplers keep their coefficients in float64 and cast them once to the sample's dtype, so a
float16 or bfloat16 run differs from the float64 run of the same sampler, grid and noise only by
rounding in the state and the model. :func:`run_precision` measures that difference (max |x_low -
x_64| over a batch of the 64-D exact mixture, DDPM schedule) for every registry sampler at each
NFE, and whether any NaN/Inf appeared. The deviation of one sample is its RMS over coordinates;
the table shows the median over the batch (robust) and the tests bound it. The maximum is
recorded too: near the boundary between two modes' basins a rounding error can send one
trajectory to the other mode, a property of the ODE rather than of the solver. Stochastic samplers draw their noise in float32 and cast
it (``solvers._common.noise_like``), so one seed gives the same noise in every dtype and the
comparison stays meaningful. ``python -m fastdiff_edu.bench precision`` prints the table.

What to expect: rounding errors of size u (float16: 4.9e-4, bfloat16: 3.9e-3 relative) enter at
every step and are carried to the end by the solver's own stability; low-order, few-stage
methods pass them on almost unchanged, while methods that combine many evaluations with large
weights (high-order Runge-Kutta and linear multistep schemes in poorly scaled variables)
amplify them.
"""
from __future__ import annotations

import torch

from . import problems, schedules, solvers
from .testbed import sampler_options

__all__ = ["DTYPES", "run_precision", "format_precision"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run_precision(solver_names=None, nfes=(5, 10, 20, 50), dtypes=("float16", "bfloat16"), batch: int = 16,
                  seed: int = 3, progress: bool = False) -> dict:
    """For each sampler, NFE and dtype: the max deviation from the float64 run and finiteness.

    Adaptive samplers run once with their default tolerances (their "NFE" is their own)."""
    schedule = schedules.DiscreteVP.ddpm_linear()
    data = problems.gmm64()
    model = data.prediction(schedule)
    x_T = schedule.prior_sample((batch, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    names = solver_names or sorted(solvers.REGISTRY)
    rows = []
    iterator = names
    if progress:
        from tqdm import tqdm
        iterator = tqdm(names, desc="precision", leave=False)
    for name in iterator:
        spec = solvers.get(name)
        budgets = [None] if spec.adaptive else [n for n in nfes if n >= spec.min_nfe]
        for nfe in budgets:
            budget = {} if nfe is None else {"nfe": nfe}
            # fresh generators for each run; Gamma for Analytic-DPM from few samples (precision only)
            options = lambda: sampler_options(name, model, "gmm64", data, gamma_samples=32)  # noqa: E731
            exact = solvers.sample(model, x_T, name, **budget, **options())
            for dtype_name in dtypes:
                low = solvers.sample(model, x_T.to(DTYPES[dtype_name]), name, **budget, **options())
                finite = bool(torch.isfinite(low).all())
                per_sample = (low.double() - exact).square().mean(dim=1).sqrt()
                rows.append({"solver": name, "nfe": nfe, "dtype": dtype_name, "finite": finite,
                             "median_deviation": float(per_sample.median()) if finite else float("inf"),
                             "max_deviation": float(per_sample.max()) if finite else float("inf"),
                             "dtype_kept": low.dtype == DTYPES[dtype_name]})
    return {"problem": "gmm64", "schedule": repr(schedule), "batch": batch, "rows": rows}


def format_precision(result: dict) -> str:
    dtypes = sorted({r["dtype"] for r in result["rows"]})
    nfes = sorted({r["nfe"] for r in result["rows"] if r["nfe"] is not None})
    lines = [f"Median over the batch of the RMS deviation |x_low - x_float64| on {result['problem']}, "
             f"{result['schedule']}, batch {result['batch']} (inf = NaN/Inf appeared)", ""]
    header = "| solver | " + " | ".join(f"{d} NFE {n}" for d in dtypes for n in nfes) + " |"
    lines += [header, "|---" * (1 + len(dtypes) * len(nfes)) + "|"]
    table = {(r["solver"], r["dtype"], r["nfe"]): r["median_deviation"] for r in result["rows"]}
    for name in sorted({r["solver"] for r in result["rows"]}):
        cells = []
        for d in dtypes:
            for n in nfes:
                value = table.get((name, d, n), table.get((name, d, None)))
                cells.append("-" if value is None else f"{value:.1e}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
