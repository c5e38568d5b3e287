"""Run every registered sampler on CUDA and check what the CPU tests cannot.

    python scripts/gpu_check.py            # needs a CUDA device; exits 0 with a note without one

For each sampler, on the exact 64-D mixture (DDPM schedule, batch 256, NFE 10, float32):
- the result stays on the GPU in the input's dtype, and is finite;
- no host synchronisation inside the sampling loop: CUDA's sync debug mode is switched to
  "error" by the callback after the first step and back off at the last, so any .item(),
  float(tensor), .cpu() or data-dependent shape inside the loop raises;
- deterministic samplers agree with the same run on the CPU (float32, stated tolerance);
- float16 and bfloat16 inputs give finite samples; their distance to the float32 run is printed.
It is a check to run by hand on a lent GPU, never part of CI (which has no GPU).
"""
from __future__ import annotations

import sys
import time

import torch

import fastdiff_edu as fd
import fastdiff_edu.genie_head  # noqa: F401 (fd.genie_head)

CPU_TOLERANCE = 1e-3  # float32 CPU vs GPU, RMS over coordinates: different kernels, same math


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (this script is for a machine with a GPU)")
        return 0
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    sched = fd.schedules.DiscreteVP.ddpm_linear()
    data = fd.problems.gmm64()
    model = data.prediction(sched)
    x_cpu = sched.prior_sample((256, 64), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    failures = 0
    print(f"{'sampler':<18}{'nfe':>5}{'ms':>9}{'|gpu-cpu|':>12}{'fp16':>10}{'bf16':>10}  status")
    for name, spec in sorted(fd.REGISTRY.items()):
        if spec.adaptive:
            print(f"{name:<18} skipped (adaptive: scipy on the host)")
            continue
        # GENIE's head, Analytic-DPM's Gamma (host-side tables); generators are made per device below
        extra = {k: v for k, v in fd.testbed.sampler_options(name, model, "gmm64", data).items() if k != "generator"}
        nfe = max(10, spec.min_nfe)
        grid = fd.timesteps.make(sched, spec.default_grid, spec.steps_for_nfe(nfe, dict(spec.defaults)))
        steps = grid.numel() - 1
        if name == "dpm-solver-fast":  # its loop runs over the outer steps of mixed order
            steps = len(fd.solvers.dpm_solver_fast.fast_orders(steps))

        def guard(step, t, x, steps=steps):
            # the loop must not talk to the host: error on any sync from the second step on
            torch.cuda.set_sync_debug_mode("error" if step < steps - 1 else "default")

        def run(x, device):
            options = dict(extra, **({"generator": torch.Generator(device).manual_seed(1)} if spec.stochastic else {}))
            if "head" in options:  # GENIE's head is a network: it runs where the samples are
                options["head"] = fd.genie_head.load_head("gmm64", device=device)
            return fd.sample(model, x, name, timesteps=grid, callback=guard if device.type == "cuda" else None,
                             **options)

        status = "ok"
        try:
            torch.cuda.synchronize()
            start = time.perf_counter()
            x_gpu = run(x_cpu.to(dev), dev)
            torch.cuda.synchronize()
            ms = 1e3 * (time.perf_counter() - start)
            torch.cuda.set_sync_debug_mode("default")
            assert x_gpu.device.type == "cuda" and x_gpu.dtype == torch.float32, "device/dtype not kept"
            assert bool(torch.isfinite(x_gpu).all()), "non-finite samples"
            diff = float("nan")
            if not spec.stochastic:
                diff = fd.metrics.rmse(x_gpu.cpu(), run(x_cpu, torch.device("cpu")))
                assert diff < CPU_TOLERANCE, f"GPU and CPU differ by {diff:.2e}"
            low = []
            for dtype in (torch.float16, torch.bfloat16):
                x_low = run(x_cpu.to(dev, dtype), dev)
                torch.cuda.set_sync_debug_mode("default")
                assert x_low.dtype == dtype and bool(torch.isfinite(x_low).all()), f"{dtype} not finite"
                low.append(fd.metrics.rmse(x_low.float().cpu(), x_gpu.cpu()))
        except Exception as err:  # report and go on: the table is the result
            torch.cuda.set_sync_debug_mode("default")
            failures += 1
            status = f"FAIL {type(err).__name__}: {str(err).splitlines()[0][:140]}"
            ms, diff, low = float("nan"), float("nan"), [float("nan")] * 2
        print(f"{name:<18}{nfe:>5}{ms:>9.1f}{diff:>12.2e}{low[0]:>10.2e}{low[1]:>10.2e}  {status}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
