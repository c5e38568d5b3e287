"""Solver overhead: what a sampler costs besides the network.

Sampling time is NFE x (network time) + overhead. To see the overhead alone the network is a
*zero-cost model* that returns a preallocated tensor, so every microsecond measured is the
sampler's own bookkeeping: coefficient arithmetic, tensor combinations, allocations, Python.
Each sampler runs ``steps`` steps on a ``(batch, dim)`` float32 tensor on the CPU (one thread,
so that the numbers measure work, not thread scheduling); the time per step is the median over
``repeats`` runs after a warm-up. The unit is one *axpy* (``torch.add(x, y, alpha=a)``, out of
place) on the same tensors: "3 units per step" means the solver's step costs as much as three
such vector operations.

Next to each of our samplers the same method is timed as the established libraries implement it
(diffusers schedulers in their ``step`` loop, k-diffusion's sampling functions), in the same
process, on the same tensors and number of steps. The libraries are optional: where one is not
installed its column is empty. ``python -m fastdiff_edu.bench overhead`` prints the table.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import schedules, solvers, timesteps
from .integrations.k_diffusion import load_sampling
from .prediction import Prediction

Tensor = torch.Tensor

__all__ = ["OverheadRow", "axpy_seconds", "time_ours", "run_overhead", "format_overhead", "COUNTERPARTS"]


@dataclass
class OverheadRow:
    solver: str
    nfe_per_step: float
    ours_us: float
    ours_units: float
    diffusers: str | None
    diffusers_us: float | None
    k_diffusion: str | None
    k_diffusion_us: float | None

    def ratio_to_fastest(self) -> float | None:
        """Ours / the fastest established implementation (None where there is none)."""
        theirs = [v for v in (self.diffusers_us, self.k_diffusion_us) if v is not None]
        return self.ours_us / min(theirs) if theirs else None


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call costs (caches, lazy imports) are not overhead per step
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def axpy_seconds(x: Tensor, repeats: int = 7, inner: int = 200) -> float:
    """Seconds of one out-of-place axpy on tensors like ``x``."""
    y = torch.randn_like(x)

    def many():
        for _ in range(inner):
            torch.add(x, y, alpha=0.5)

    return _median_seconds(many, repeats) / inner


def zero_cost_model(schedule, x: Tensor) -> Prediction:
    zero = torch.zeros_like(x)
    return Prediction(lambda x_in, t: zero, schedule, kind="eps")


def time_ours(name: str, schedule, x: Tensor, steps: int, repeats: int = 5) -> tuple[float, float]:
    """(seconds per step, evaluations per step) of registry sampler ``name``."""
    spec = solvers.get(name)
    model = zero_cost_model(schedule, x)
    grid = timesteps.make(schedule, spec.default_grid if spec.default_grid != "karras" or
                          schedule.reaches_zero_noise else "logsnr", steps)
    def options():
        opts = {"generator": torch.Generator().manual_seed(0)} if spec.stochastic else {}
        if name.startswith("analytic-"):  # Gamma of the zero-cost model (estimated once, cheaply)
            opts["gamma"] = gamma
        if name == "genie":  # the 64-D head: its cost is part of GENIE's step
            opts["head"] = head
        return opts

    if name.startswith("analytic-"):
        from .solvers.analytic_dpm import estimate_gamma
        batch = x.shape[0]  # the zero-cost model answers batches of x's size only
        gamma = estimate_gamma(model, torch.randn(batch, *x.shape[1:]), n_samples=batch, batch_size=batch,
                               generator=torch.Generator().manual_seed(0))
    if name == "genie":
        from .genie_head import load_head
        if x.shape[1:] != (64,):
            raise ValueError("genie's shipped head is 64-dimensional: time it with dim=64")
        head = load_head("gmm64")
    run = lambda: solvers.sample(model, x, name, timesteps=grid, **options())  # noqa: E731
    seconds = _median_seconds(run, repeats)
    model.reset_nfe()
    run()
    return seconds / steps, model.nfe / steps


# -- the established implementations -------------------------------------------------------------
def _diffusers():
    try:
        import diffusers
    except ImportError:
        return None
    return diffusers


#: ours -> (diffusers scheduler class and config, k-diffusion sampler and keyword arguments)
COUNTERPARTS: dict[str, tuple[tuple[str, dict] | None, tuple[str, dict] | None]] = {
    "ddim": (("DDIMScheduler", {}), ("sample_euler", {})),
    "euler-edm": (("EulerDiscreteScheduler", {}), ("sample_euler", {})),
    "heun-edm": (("HeunDiscreteScheduler", {}), ("sample_heun", {})),
    "ddpm": (("DDPMScheduler", {}), ("sample_euler_ancestral", {})),
    "dpm-solver-2m": (("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}), None),
    "dpm-solver++2m": (("DPMSolverMultistepScheduler", {}), ("sample_dpmpp_2m", {})),
    "dpm-solver++3m": (("DPMSolverMultistepScheduler", {"solver_order": 3}), ("sample_dpmpp_3m_sde", {"eta": 0.0})),
    "sde-dpm-solver++2m": (("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
                           ("sample_dpmpp_2m_sde", {"noise_sampler": "gaussian"})),
    "dpm-solver++2s": (("DPMSolverSinglestepScheduler", {"solver_order": 2}),
                       ("sample_dpmpp_2s_ancestral", {"eta": 0.0})),
    "dpm-solver-2": (("DPMSolverSinglestepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver",
                                                       "final_sigmas_type": "sigma_min"}), ("sample_dpm_2", {})),
    "dpm-solver-3": (("DPMSolverSinglestepScheduler", {"solver_order": 3, "algorithm_type": "dpmsolver",
                                                       "final_sigmas_type": "sigma_min"}), None),
    "plms": (("PNDMScheduler", {"skip_prk_steps": True}), None),
    "f-pndm": (("PNDMScheduler", {}), None),
    "deis-tab": (("DEISMultistepScheduler", {}), None),
    "ipndm": (("IPNDMScheduler", {}), None),
}

DDPM_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def time_diffusers(class_name: str, config: dict, x: Tensor, steps: int, repeats: int = 5) -> float | None:
    """Seconds per step of a diffusers scheduler's pipeline loop with a zero-cost model."""
    diffusers = _diffusers()
    if diffusers is None or not hasattr(diffusers, class_name):
        return None
    scheduler_class = getattr(diffusers, class_name)
    known = set(scheduler_class.__init__.__code__.co_varnames)
    kwargs = {k: v for k, v in {**DDPM_CONFIG, **config}.items() if k in known or k in config}
    if class_name == "IPNDMScheduler":
        kwargs = {"num_train_timesteps": 1000}
    scheduler = scheduler_class(**kwargs)
    zero = torch.zeros_like(x)
    generator = torch.Generator().manual_seed(0)

    def run():
        scheduler.set_timesteps(steps)
        sample = x
        for label in scheduler.timesteps:
            model_input = scheduler.scale_model_input(sample, label)
            del model_input  # the zero-cost network ignores it
            step_kwargs = {"generator": generator} if class_name in ("DDPMScheduler", "DPMSolverMultistepScheduler") else {}
            sample = scheduler.step(zero, label, sample, **step_kwargs).prev_sample
        return sample

    seconds = _median_seconds(run, repeats)
    scheduler.set_timesteps(steps)
    # diffusers counts a model call per entry of `timesteps` (Heun and singlestep repeat entries)
    return seconds / steps


def time_k_diffusion(sampler: str, options: dict, schedule, x: Tensor, steps: int, repeats: int = 5) -> float | None:
    """Seconds per step of a k-diffusion sampler over the same number of sigma steps."""
    K = load_sampling()
    if K is None or not hasattr(K, sampler):
        return None
    grid = timesteps.make(schedule, "logsnr", steps)
    sigmas = torch.cat([schedule.sigma_bar(grid[:-1]), torch.zeros(1, dtype=torch.float64)]).float()
    zero = torch.zeros_like(x)
    options = dict(options)
    if options.get("noise_sampler") == "gaussian":  # plain Gaussian noise instead of a Brownian tree
        generator = torch.Generator().manual_seed(0)
        options["noise_sampler"] = lambda sigma, sigma_next: torch.randn(x.shape, generator=generator)
    run = lambda: getattr(K, sampler)(lambda x_in, sigma: zero, x, sigmas, disable=True, **options)  # noqa: E731
    return _median_seconds(run, repeats) / steps


def run_overhead(solver_names=None, batch: int = 512, dim: int = 64, steps: int = 50, repeats: int = 5,
                 progress: bool = True) -> dict:
    """Measure every sampler (default: the registry minus the adaptive ones) and its counterparts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        schedule = schedules.DiscreteVP.ddpm_linear()
        x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(0))
        unit = axpy_seconds(x)
        names = solver_names or [n for n, s in sorted(solvers.REGISTRY.items()) if not s.adaptive]
        rows = []
        for name in (names if not progress else _progress(names)):
            per_step, nfe_per_step = time_ours(name, schedule, x, steps, repeats)
            d_spec, k_spec = COUNTERPARTS.get(name, (None, None))
            d_time = time_diffusers(*d_spec, x, steps, repeats) if d_spec else None
            k_time = time_k_diffusion(*k_spec, schedule, x, steps, repeats) if k_spec else None
            rows.append(OverheadRow(name, nfe_per_step, per_step * 1e6, per_step / unit,
                                    d_spec[0] if d_spec and d_time is not None else None,
                                    None if d_time is None else d_time * 1e6,
                                    k_spec[0] if k_spec and k_time is not None else None,
                                    None if k_time is None else k_time * 1e6))
    finally:
        torch.set_num_threads(threads)
    return {"batch": batch, "dim": dim, "steps": steps, "dtype": "float32", "threads": 1,
            "axpy_us": unit * 1e6, "rows": [row.__dict__ for row in rows]}


def _progress(names):
    from tqdm import tqdm
    return tqdm(names, desc="overhead", leave=False)


def format_overhead(result: dict) -> str:
    lines = [f"Solver overhead per step, zero-cost model, batch {result['batch']} x {result['dim']} float32, CPU, "
             f"1 thread, {result['steps']} steps; unit = one axpy = {result['axpy_us']:.1f} us",
             "",
             "| solver | NFE/step | ours us/step | ours axpy units | diffusers (us/step) | k-diffusion (us/step) "
             "| ours / fastest |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        row = OverheadRow(**r)
        d = f"{row.diffusers} {row.diffusers_us:.0f}" if row.diffusers_us is not None else "-"
        k = f"{row.k_diffusion} {row.k_diffusion_us:.0f}" if row.k_diffusion_us is not None else "-"
        ratio = row.ratio_to_fastest()
        lines.append(f"| {row.solver} | {row.nfe_per_step:.2f} | {row.ours_us:.0f} | {row.ours_units:.1f} | {d} | {k} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)
