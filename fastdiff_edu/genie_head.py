"""GENIE's distilled derivative head, for the exact test bed (book chapter: genie).

GENIE (Dockhorn, Vahdat & Kreis 2022) trains a small extra head k_psi to predict the total
derivative d eps/d gamma (gamma = sigma_bar = sigma/alpha) from the base model's input and
output, by regression against the exact JVPs of the base model. Here the base model is the
exact Gaussian-mixture predictor and the head is a small MLP:

    inputs:  x_t, eps_hat(x_t, t), Fourier features of log sigma_bar(t)
    output:  g = sigma_bar d eps/d sigma_bar
             = (k_1 + k_2 sigma_bar^2/(1 + sigma_bar^2)) / (1 + sigma_bar^2),

where (k_1, k_2) are the MLP's outputs. The form follows the Gaussian case: for data with
variance s^2 along a direction, g = eps s^2/(s^2 + sigma_bar^2), which decays like
1/sigma_bar^2 at large noise (the paper builds its head on a basis motivated the same way,
-k_1/gamma + k_2 gamma/(1+gamma^2) + k_3/(gamma(1+gamma^2))). The decay matters: the first steps
of a sampler are long (h ~ sigma_bar), and a head whose g does not vanish there puts its error
into the sample with weight ~h^2/sigma_bar.
The loss is the mean square error of g, the official code's gamma^2-weighted loss of d eps/d gamma.

Training data are states of the probability-flow ODE: at each of many times t, exact samples of
the marginal ``problem.marginal_at(schedule, t)`` (the ODE transports the marginals), with the
targets from :func:`fastdiff_edu.solvers.genie.total_derivative` (one JVP of the exact model).

    python -m fastdiff_edu.genie_head --problem gmm64      # or ring2d; ~1-2 min on one CPU core

writes ``fastdiff_edu/weights/genie-head-<problem>.safetensors`` and its card;
:func:`load_head` builds the head from the shipped file (the hash is checked).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from . import problems, schedules, weights
from .schedules import Schedule, as_float64

Tensor = torch.Tensor

__all__ = ["GenieHead", "load_head", "make_dataset", "train", "PROBLEMS", "SCHEDULES", "main"]

PROBLEMS = {"gmm64": problems.gmm64, "ring2d": problems.ring2d}
SCHEDULES = {"ddpm_linear": schedules.DiscreteVP.ddpm_linear}
#: training settings per problem: (times, samples per time, steps, hidden width)
SETTINGS = {"gmm64": dict(times=384, per_time=128, steps=6000, hidden=128),
            "ring2d": dict(times=384, per_time=128, steps=6000, hidden=64)}


class GenieHead(nn.Module):
    """``head(x, t, eps) -> d eps/d sigma_bar`` for samples of shape (batch, dim) under ``schedule``."""

    def __init__(self, dim: int, schedule: Schedule, hidden: int = 128, fourier: int = 4,
                 schedule_name: str = "ddpm_linear"):
        super().__init__()
        self.dim, self.schedule, self.hidden, self.fourier = dim, schedule, hidden, fourier
        self.schedule_name = schedule_name
        self.net = nn.Sequential(nn.Linear(2 * dim + 1 + 2 * fourier, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * dim))

    def check_compatible(self, model, x_T: Tensor) -> None:
        """Raise ValueError (before any model call) if the head cannot serve this model and sample."""
        if repr(model.schedule) != repr(self.schedule):
            raise ValueError(f"genie: the head was trained for schedule {self.schedule!r}, the model uses "
                             f"{model.schedule!r}; train a head for it (python -m fastdiff_edu.genie_head)")
        if tuple(x_T.shape[1:]) != (self.dim,):
            raise ValueError(f"genie: the head expects samples of shape (batch, {self.dim}), got {tuple(x_T.shape)}")

    def _sigma_bar(self, t, batch: int, device) -> Tensor:
        sb = self.schedule.sigma_bar(as_float64(t, device=device))
        return (sb.expand(batch) if sb.ndim == 0 else sb).reshape(batch, 1)

    def scaled(self, x: Tensor, t, eps: Tensor, sigma_bar: Tensor | None = None) -> Tensor:
        """g = sigma_bar d eps/d sigma_bar, the quantity the head regresses (float32)."""
        sb = self._sigma_bar(t, x.shape[0], x.device) if sigma_bar is None else sigma_bar
        log_sb = torch.log(sb)
        k = torch.arange(1, self.fourier + 1, device=x.device, dtype=torch.float64) * (math.pi / 6)
        feats = torch.cat([log_sb / 5, torch.sin(k * log_sb), torch.cos(k * log_sb)], dim=1)
        dtype = self.net[0].weight.dtype
        k1, k2 = self.net(torch.cat([x.to(dtype), eps.to(dtype), feats.to(dtype)], dim=1)).chunk(2, dim=1)
        shrink = (1 / (1 + sb**2)).to(dtype)
        return (k1 + k2 * (1 - shrink)) * shrink

    def forward(self, x: Tensor, t, eps: Tensor) -> Tensor:
        sb = self._sigma_bar(t, x.shape[0], x.device)
        with torch.no_grad():
            return (self.scaled(x, t, eps, sb).to(torch.float64) / sb).to(x.dtype)

    def card(self) -> dict:
        return dict(dim=self.dim, hidden=self.hidden, fourier=self.fourier, schedule=self.schedule_name)


def load_head(name_or_path: str = "gmm64", device="cpu") -> GenieHead:
    """The shipped head for ``"gmm64"`` or ``"ring2d"`` (or a path to a .safetensors file).

    :func:`fastdiff_edu.weights.load` checks the file's SHA-256 against its card and raises
    ``WeightsError`` on a mismatch.
    """
    name = f"genie-head-{name_or_path}" if name_or_path in PROBLEMS else name_or_path
    tensors, card = weights.load(name, device=device)
    head = GenieHead(card["dim"], SCHEDULES[card["schedule"]](), card["hidden"], card["fourier"], card["schedule"])
    head.load_state_dict(tensors)
    head.card_info = card
    return head.to(device).eval().requires_grad_(False)


def _training_times(schedule: Schedule, n: int, generator: torch.Generator) -> Tensor:
    """Half uniform in t, half uniform in lambda, over [t_min, t_max]: every grid kind is covered."""
    lo, hi = schedule.t_min, schedule.t_max
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    t_uniform = lo + (hi - lo) * u[: n // 2]
    lam_lo, lam_hi = schedule.half_log_snr(torch.tensor(hi)), schedule.half_log_snr(torch.tensor(lo))
    t_lambda = schedule.t_of_half_log_snr(lam_lo + (lam_hi - lam_lo) * u[n // 2:])
    both = torch.cat([t_uniform, t_lambda]).clamp(lo, hi)
    return both[torch.randperm(n, generator=generator)]


def make_dataset(problem: str, times: int, per_time: int, seed: int, progress: bool = False):
    """(t, x, eps, g) with g = sigma_bar * exact d eps/d sigma_bar, float64, ``times * per_time`` rows."""
    from .solvers.genie import tangent_coefficients, total_derivative

    mixture, schedule = PROBLEMS[problem](), SCHEDULES["ddpm_linear"]()
    model = mixture.prediction(schedule)
    gen = torch.Generator().manual_seed(seed)
    ts = _training_times(schedule, times, gen)
    alpha, dlog_alpha, dt = tangent_coefficients(schedule, ts)
    rows = {"t": [], "x": [], "eps": [], "g": []}
    for i in tqdm(range(times), desc=f"exact JVPs ({problem})", disable=not progress, file=sys.stderr):
        x = mixture.marginal_at(schedule, ts[i]).sample(per_time, gen)
        eps = model.eps(x, ts[i])
        d_eps = total_derivative(model, x, ts[i], eps, alpha[i], dlog_alpha[i], dt[i])
        rows["t"].append(ts[i].expand(per_time))
        rows["x"].append(x)
        rows["eps"].append(eps)
        rows["g"].append(schedule.sigma_bar(ts[i]) * d_eps)
    return {k: torch.cat(v) for k, v in rows.items()}, mixture.dim


def _relative_error(head: GenieHead, data: dict) -> tuple[float, float]:
    """(relative RMS error of g, RMS error of g) of the head on ``data``."""
    with torch.no_grad():
        pred = head.scaled(data["x"], data["t"], data["eps"]).to(torch.float64)
    err = (pred - data["g"]).pow(2).mean().sqrt()
    return float(err / data["g"].pow(2).mean().sqrt()), float(err)


def train(problem: str, seed: int = 0, steps: int | None = None, batch: int = 512, lr: float = 3e-3,
          progress: bool = True) -> tuple[GenieHead, dict]:
    """Train a head for ``problem``; returns it and the numbers for its card."""
    settings = dict(SETTINGS[problem])
    steps = settings["steps"] if steps is None else steps
    start = time.perf_counter()
    torch.manual_seed(seed)
    data, dim = make_dataset(problem, settings["times"], settings["per_time"], seed, progress)
    held_out = settings["per_time"] * (settings["times"] // 10)  # the last 10% of the (shuffled) times
    perm = torch.randperm(data["t"].numel() - held_out, generator=torch.Generator().manual_seed(seed + 1))
    train_data = {k: v[perm] for k, v in data.items()}
    val_data = {k: v[-held_out:] for k, v in data.items()}
    head = GenieHead(dim, SCHEDULES["ddpm_linear"](), hidden=settings["hidden"])
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    gen = torch.Generator().manual_seed(seed + 2)
    n = train_data["t"].numel()
    bar = tqdm(range(steps), desc=f"train head ({problem})", disable=not progress, file=sys.stderr)
    for _ in bar:
        idx = torch.randint(n, (batch,), generator=gen)
        pred = head.scaled(train_data["x"][idx], train_data["t"][idx], train_data["eps"][idx])
        loss = (pred - train_data["g"][idx].float()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.2e}", refresh=False)
    rel, rms = _relative_error(head, val_data)
    info = dict(problem=problem, seed=seed, steps=steps, batch=batch, lr=lr, final_train_loss=float(loss.detach()),
                val_relative_rms_error=rel, val_rms_error=rms, training_seconds=round(time.perf_counter() - start, 1),
                times=settings["times"], per_time=settings["per_time"])
    return head, info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train GENIE's distilled derivative head on an exact problem.")
    parser.add_argument("--problem", choices=sorted(PROBLEMS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="weight file (default: the shipped one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    head, info = train(args.problem, args.seed, args.steps)
    out = args.out or str(weights.SHIPPED_DIR / f"genie-head-{args.problem}.safetensors")
    command = f"python -m fastdiff_edu.genie_head --problem {args.problem} --seed {args.seed}"
    if args.steps is not None:
        command += f" --steps {args.steps}"
    card = dict(head.card(), **info, kind="genie-head", base_model=f"exact {args.problem} eps, DiscreteVP.ddpm_linear",
                target="sigma_bar * d eps/d sigma_bar (exact JVP)", command=command, torch=torch.__version__)
    path = weights.save(out, head.state_dict(), card)
    print(f"wrote {path}: validation relative RMS error {info['val_relative_rms_error']:.3e}, "
          f"{info['training_seconds']} s")


if __name__ == "__main__":
    main()
