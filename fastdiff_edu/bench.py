"""Benchmarks that print tables: ``python -m fastdiff_edu.bench [error|overhead|precision|gpu] ...``.

``error`` (the default) measures every requested sampler on an exact problem at each NFE:

    python -m fastdiff_edu.bench --problem gmm64 --solvers ddim,euler --nfe 5,10,20,50

and prints the error to the reference ODE solution (RMSE, same noise), the sliced
Wasserstein-2 distance to exact samples of the marginal at the end time, the NFE really used
(counted), and each solver's fitted order. ``--json`` and ``--plot`` save the numbers and a
log-log figure. All solvers share one grid kind (``--grid``, logSNR-uniform by default) so the
comparison isolates the solver; ``--grid default`` uses each solver's own default instead.

``overhead`` times each sampler's own work per step with a zero-cost model, next to diffusers'
and k-diffusion's implementation of the same method, in units of one axpy
(:mod:`fastdiff_edu.overhead`). ``precision`` runs every sampler in float16 and bfloat16 against
its float64 run (:mod:`fastdiff_edu.precision`). ``gpu`` runs every sampler with the shipped
digits UNet on CUDA (:mod:`fastdiff_edu.gpu_bench`; exits with a note where there is no GPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from . import metrics, problems, reference, schedules, solvers, testbed, timesteps

SCHEDULES = {
    "ddpm": schedules.DiscreteVP.ddpm_linear,
    "vp-linear": schedules.VPLinear,
    "cosine": schedules.VPCosine,
    "ve": schedules.VE,
    "edm": schedules.EDM,
}


@dataclass
class Row:
    solver: str
    grid: str
    nfe_asked: int | None
    nfe_used: int
    rmse: float | None
    sliced_w2: float
    seconds: float


def _parse_list(text: str, cast=str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return [cast(item) for item in items]


def run_error(problem: str = "gmm64", schedule: str = "ddpm", solver_names=("ddim", "euler"),
              nfes=(5, 10, 20, 50), grid: str = "logsnr", batch: int = 256, exact_samples: int = 4096,
              seed: int = 0, progress: bool = True) -> dict:
    """Measure the samplers; return a JSON-ready dict (see module docstring)."""
    for name in solver_names:
        solvers.get(name)  # unknown names fail before any work
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    if grid != "default" and timesteps.ALIASES.get(grid, grid) not in timesteps.KINDS:
        raise ValueError(f"unknown grid {grid!r}; choose 'default' or one of {timesteps.KINDS}")
    if any(n < 1 for n in nfes):
        raise ValueError("every NFE must be a positive integer")
    data = problems.get(problem)
    sched = SCHEDULES[schedule]()
    model = data.prediction(sched)
    gen = torch.Generator().manual_seed(seed)
    x_T = sched.prior_sample((batch, data.dim), generator=gen, dtype=torch.float64)
    marginal = data.marginal_at(sched, sched.t_min)
    exact = marginal.sample(exact_samples, generator=torch.Generator().manual_seed(seed + 1))

    started = time.perf_counter()
    ref, ref_info = reference.solve(model, x_T, return_info=True, progress=progress)
    ref_seconds = time.perf_counter() - started
    out = {
        "problem": problem, "schedule": repr(sched), "grid": grid, "batch": batch, "seed": seed,
        "t_start": sched.t_max, "t_end": sched.t_min, "torch": torch.__version__, "machine": platform.machine(),
        "reference": {"nfe": ref_info.nfe, "rtol": ref_info.rtol, "seconds": ref_seconds,
                      "sliced_w2": metrics.sliced_wasserstein(ref, exact)},
        "rows": [], "orders": {},
    }
    jobs = [(name, nfe) for name in solver_names for nfe in (nfes if not solvers.get(name).adaptive else [None])]
    for name, nfe in tqdm(jobs, desc="bench", disable=not progress, file=sys.stderr):
        spec = solvers.get(name)
        grid_kind = spec.default_grid if grid == "default" else grid
        if not testbed.supports(name, problem, sched):
            continue
        options = testbed.sampler_options(name, model, problem, data, seed=seed + 2)
        started = time.perf_counter()
        if spec.adaptive:
            x, info = solvers.sample(model, x_T, name, return_info=True, **options)
        else:
            x, info = solvers.sample(model, x_T, name, nfe=nfe, grid=grid_kind, return_info=True, **options)
        seconds = time.perf_counter() - started
        out["rows"].append(asdict(Row(
            solver=name, grid="adaptive" if spec.adaptive else grid_kind, nfe_asked=nfe, nfe_used=info.nfe,
            rmse=None if spec.stochastic else metrics.rmse(x, ref),
            sliced_w2=metrics.sliced_wasserstein(x, exact), seconds=seconds)))
    for name in solver_names:
        rows = [r for r in out["rows"] if r["solver"] == name and r["rmse"]]
        if len(rows) >= 2:
            out["orders"][name] = metrics.empirical_order([r["nfe_used"] for r in rows], [r["rmse"] for r in rows])
    return out


def format_table(result: dict) -> str:
    ref = result["reference"]
    lines = [
        f"problem {result['problem']}, {result['schedule']}, batch {result['batch']}, seed {result['seed']}, "
        f"t {result['t_start']:g} -> {result['t_end']:g}",
        f"reference: DOP853 rtol {ref['rtol']:g}, {ref['nfe']} NFE; its sliced W2 to exact samples "
        f"(the sampling floor) {ref['sliced_w2']:.3e}",
        "",
        f"{'solver':<16}{'grid':<15}{'NFE':>5}{'used':>6}{'RMSE to ref':>14}{'sliced W2':>12}{'order':>8}",
    ]
    for row in result["rows"]:
        rmse = f"{row['rmse']:.3e}" if row["rmse"] is not None else "-"
        asked = row["nfe_asked"] if row["nfe_asked"] is not None else "-"
        lines.append(f"{row['solver']:<16}{row['grid']:<15}{asked:>5}{row['nfe_used']:>6}{rmse:>14}"
                     f"{row['sliced_w2']:>12.3e}{'':>8}")
        last = [r for r in result["rows"] if r["solver"] == row["solver"]][-1]
        if row is last and row["solver"] in result["orders"]:
            lines[-1] = lines[-1][:-8] + f"{result['orders'][row['solver']]:>8.2f}"
    lines.append("")
    lines.append("order: minus the least-squares slope of log RMSE against log NFE over the rows above")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_sw) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["solver"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["solver"] == name]
        nfe = [r["nfe_used"] for r in rows]
        if all(r["rmse"] is not None for r in rows):
            label = f"{name} (order {result['orders'][name]:.2f})" if name in result["orders"] else name
            ax_err.loglog(nfe, [r["rmse"] for r in rows], "o-", label=label)
        ax_sw.loglog(nfe, [r["sliced_w2"] for r in rows], "o-", label=name)
    ax_sw.axhline(result["reference"]["sliced_w2"], color="gray", ls="--", label="reference (floor)")
    ax_err.set(xlabel="NFE", ylabel="RMSE to reference", title="trajectory error")
    ax_sw.set(xlabel="NFE", ylabel="sliced W2 to exact samples", title="distribution error")
    for ax in (ax_err, ax_sw):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['problem']}, {result['schedule']}, grid {result['grid']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _check_solvers(parser: argparse.ArgumentParser, names) -> None:
    """Unknown solver names end the command with the registry's message, before any work."""
    try:
        for name in names or []:
            solvers.get(name)
    except KeyError as err_msg:
        parser.error(str(err_msg).strip("'\""))


def _write_json(path: str | None, result: dict) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(result, handle, indent=2)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "error")
    parser = argparse.ArgumentParser(prog="python -m fastdiff_edu.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    err = sub.add_parser("error", help="error and distribution distance against NFE on an exact problem")
    err.add_argument("--problem", default="gmm64", choices=sorted(problems.PROBLEMS))
    err.add_argument("--schedule", default="ddpm", choices=sorted(SCHEDULES))
    err.add_argument("--solvers", default="ddim,euler", type=_parse_list,
                     help=f"comma-separated names from: {', '.join(sorted(solvers.REGISTRY))}")
    err.add_argument("--nfe", default="5,10,20,50", type=lambda s: _parse_list(s, int))
    err.add_argument("--grid", default="logsnr", help="grid kind for every solver, or 'default'")
    err.add_argument("--batch", type=int, default=256)
    err.add_argument("--exact-samples", type=int, default=4096)
    err.add_argument("--seed", type=int, default=0)
    err.add_argument("--json", help="write the numbers to this JSON file")
    err.add_argument("--plot", help="write a log-log figure to this PNG file")
    err.add_argument("--no-progress", action="store_true")
    over = sub.add_parser("overhead", help="solver overhead per step with a zero-cost model, next to diffusers "
                                           "and k-diffusion, in axpy units")
    over.add_argument("--solvers", type=_parse_list, default=None,
                      help="comma-separated registry names (default: every non-adaptive sampler)")
    over.add_argument("--batch", type=int, default=512)
    over.add_argument("--dim", type=int, default=64)
    over.add_argument("--steps", type=int, default=50)
    over.add_argument("--repeats", type=int, default=5)
    over.add_argument("--json", help="write the numbers to this JSON file")
    over.add_argument("--no-progress", action="store_true")
    prec = sub.add_parser("precision", help="float16/bfloat16 runs of every sampler against float64 on gmm64")
    prec.add_argument("--solvers", type=_parse_list, default=None)
    prec.add_argument("--nfe", default="5,10,20,50", type=lambda s: _parse_list(s, int))
    prec.add_argument("--dtypes", default="float16,bfloat16", type=_parse_list)
    prec.add_argument("--json", help="write the numbers to this JSON file")
    gpu = sub.add_parser("gpu", help="every sampler with the shipped digits UNet on CUDA (skips without CUDA)")
    gpu.add_argument("--nfe", type=int, default=10)
    gpu.add_argument("--batch", type=int, default=256)
    gpu.add_argument("--no-compile", action="store_true")
    gpu.add_argument("--device", default="cuda", help="'cpu' runs the script against itself (a smoke test)")
    args = parser.parse_args(argv)
    if args.command == "gpu":
        from .gpu_bench import run_gpu
        return run_gpu(args.nfe, args.batch, compile_network=not args.no_compile, device=args.device)
    if args.command == "precision":
        from .precision import DTYPES, format_precision, run_precision
        _check_solvers(parser, args.solvers)
        if not set(args.dtypes) <= set(DTYPES):
            parser.error(f"dtypes must be among {sorted(DTYPES)}")
        result = run_precision(args.solvers, args.nfe, args.dtypes, progress=True)
        print(format_precision(result))
        _write_json(args.json, result)
        return 0
    if args.command == "overhead":
        from .overhead import format_overhead, run_overhead
        _check_solvers(parser, args.solvers)
        result = run_overhead(args.solvers, args.batch, args.dim, args.steps, args.repeats,
                              progress=not args.no_progress)
        print(format_overhead(result))
        _write_json(args.json, result)
        return 0
    try:
        result = run_error(args.problem, args.schedule, args.solvers, args.nfe, args.grid, args.batch,
                           args.exact_samples, args.seed, progress=not args.no_progress)
    except (KeyError, ValueError) as err_msg:
        parser.error(str(err_msg).strip("'\""))
    print(format_table(result))
    _write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
