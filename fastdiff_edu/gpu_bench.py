"""GPU readiness: every sampler with the shipped digits UNet on CUDA.

    python -m fastdiff_edu.bench gpu          # exits 0 with a note where there is no CUDA device

For each sampler (NFE 10, batch 256, float32): samples per second on the GPU, the share of the
time spent outside the network (1 - NFE x one evaluation's time / the run's time), and the RMS
difference to the same run on the CPU (same noise, float32; the two differ only by kernels'
rounding, amplified by the trajectory: the stated tolerance is :data:`CPU_TOLERANCE`). The network
is then compiled with ``torch.compile`` and two samplers are timed again. Adaptive samplers are
skipped (they decide their steps on the host); GENIE's distilled heads exist for the exact test
beds only. It is a script for a lent GPU, never part of CI.
"""
from __future__ import annotations

import time

import torch

from . import solvers

__all__ = ["run_gpu", "CPU_TOLERANCE"]

CPU_TOLERANCE = 5e-2  # RMS over pixels in [-1, 1], GPU vs CPU float32 after 10 steps
#: methods whose NFE-10 runs amplify rounding (see ``bench precision``): only finiteness is checked
AMPLIFY_ROUNDING = {"prk", "deis-rhork"}
SKIP = {"genie": "distilled heads exist for gmm64/ring2d only"}


def _timed(fn, device) -> tuple[object, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _: None)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def run_gpu(nfe: int = 10, batch: int = 256, compile_network: bool = True, device: str = "cuda") -> int:
    """``device="cpu"`` runs the same script against itself: a smoke test of the script, not a benchmark."""
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: `bench gpu` has nothing to do here (run it on a machine with a GPU)")
        return 0
    from . import nets
    from .solvers.analytic_dpm import estimate_gamma

    device = torch.device(device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    print(f"{label}, torch {torch.__version__}, digits-eps, batch {batch}, NFE {nfe}")
    gpu_model = nets.load("digits-eps", device=device)
    cpu_model = nets.load("digits-eps")
    x_cpu = torch.randn(gpu_model.sample_shape(batch), generator=torch.Generator().manual_seed(0))
    x_gpu = x_cpu.to(device)
    t_mid = torch.full((batch,), 0.5, dtype=torch.float64, device=device)
    for _ in range(3):
        gpu_model.eps(x_gpu, t_mid)  # warm-up: cuDNN autotuning, allocator
    _, eval_seconds = _timed(lambda: [gpu_model.eps(x_gpu, t_mid) for _ in range(20)], device)
    eval_seconds /= 20
    train = nets.digits_split("train")[0]
    # Analytic-DPM's Gamma table (float64, host side) is estimated once, on the CPU, for both runs
    gamma = estimate_gamma(cpu_model, train, n_samples=256, generator=torch.Generator().manual_seed(1))
    print(f"one evaluation: {eval_seconds * 1e3:.2f} ms\n")
    print(f"{'sampler':<20}{'NFE':>5}{'samples/s':>12}{'outside net':>13}{'|gpu-cpu|':>12}  status")
    failures = 0
    for name, spec in sorted(solvers.REGISTRY.items()):
        if spec.adaptive or name in SKIP:
            print(f"{name:<20} skipped: {'adaptive (host-driven steps)' if spec.adaptive else SKIP[name]}")
            continue
        budget = max(nfe, spec.min_nfe)  # F-PNDM and FON need a few more (their Runge-Kutta start)

        def options(where):
            opts = {}
            if spec.stochastic:
                opts["generator"] = torch.Generator(device=device if where == "gpu" else "cpu").manual_seed(2)
            if name.startswith("analytic-"):
                opts["gamma"] = gamma
            return opts

        try:
            solvers.sample(gpu_model, x_gpu, name, nfe=budget, **options("gpu"))  # warm-up
            gpu_model.reset_nfe()
            y_gpu, seconds = _timed(lambda: solvers.sample(gpu_model, x_gpu, name, nfe=budget, **options("gpu")), device)
            used = gpu_model.nfe
            y_cpu = solvers.sample(cpu_model, x_cpu, name, nfe=budget, **options("cpu"))
            finite = bool(torch.isfinite(y_gpu).all())
            diff = float((y_gpu.cpu() - y_cpu).square().mean().sqrt())
            # stochastic samplers draw different noise on the two devices: only finiteness is compared
            compared = not spec.stochastic and name not in AMPLIFY_ROUNDING
            ok = finite and y_gpu.device.type == device.type and (not compared or diff < CPU_TOLERANCE)
            failures += not ok
            outside = max(0.0, 1.0 - used * eval_seconds / seconds)
            print(f"{name:<20}{used:>5}{batch / seconds:>12.0f}{outside:>12.0%}"
                  f"{'(noise)' if spec.stochastic else f'{diff:.1e}':>12}  {'ok' if ok else 'FAIL'}"
                  f"{'' if compared or spec.stochastic else ' (amplifies rounding at this NFE: not compared)'}")
        except Exception as err:  # report and go on: one broken sampler should not hide the others
            failures += 1
            print(f"{name:<20} FAIL: {type(err).__name__}: {err}")
    if compile_network:
        print("\ntorch.compile of the network:")
        try:
            gpu_model.fn.net = torch.compile(gpu_model.net)
            solvers.sample(gpu_model, x_gpu, "dpm-solver++2m", nfe=nfe)  # compiles
            for name in ("ddim", "dpm-solver++2m"):
                _, seconds = _timed(lambda: solvers.sample(gpu_model, x_gpu, name, nfe=nfe), device)
                print(f"{name:<20}{batch / seconds:>12.0f} samples/s compiled")
        except Exception as err:
            print(f"torch.compile failed: {type(err).__name__}: {err}")
    print(f"\n{failures} failure(s)")
    return 1 if failures else 0
