"""Train a small diffusion model: ``python -m fastdiff_edu.nets.train --data digits --param eps --schedule ddpm``.

Design choices:

* **One generator drives everything random** in the loop (minibatch indices, times, noise): a
  ``torch.Generator`` seeded with ``--seed``; the initial weights come from ``torch.manual_seed``
  with the same seed. The run is therefore a pure function of its arguments.
* **Resumable, bit for bit.** Every ``--ckpt-every`` steps (and on SIGINT/SIGTERM, and at the end)
  ``OUT/checkpoint.pt`` receives the step, the weights, the EMA weights, Adam's state, the
  generator's state, torch's global RNG state, the loss history and the training seconds so far.
  It is written to a temporary file in the same folder and renamed over the old one
  (``os.replace`` is atomic), so a kill at any moment leaves the previous checkpoint intact.
  Running the same command again resumes from it: the steps after the last checkpoint are
  recomputed exactly, none is skipped or applied twice, and the final weights equal those of an
  uninterrupted run (``tests/test_train_resume.py`` checks this bit-exactly). ``--steps`` may be
  raised to continue a finished run; any other change of the configuration is refused.
* **EMA** of the weights (decay ``--ema``, warmed up as min(decay, (1+n)/(10+n))) is what gets
  exported; the raw weights stay in the checkpoint.
* **Export**: at the end the EMA weights go to ``--save`` (default ``OUT/model.safetensors``)
  through :func:`fastdiff_edu.weights.save`, with a card holding the data, schedule,
  parametrisation, architecture, steps, seed, final loss, training time and the command;
  :func:`fastdiff_edu.nets.load` rebuilds the model from that card alone.
* **One CPU thread by default** (``--threads``): on the shared 2-core machine this was written
  on, a 2D step took 27 ms with one thread and 345 ms with two (the threads wait on each other
  when the cores are busy).
* The loss is the plain mean squared error on the chosen parametrisation's target (eps, x0 or
  v), Ho et al. (2020) Alg. 1 for eps; no per-time weighting, so ``--param`` changes what the
  net learns in the simplest possible way.

Networks: :class:`~.unet.TinyUNet` for ``digits``, :class:`~.mlp.TimeMLP` for the 2D sets.
"""
from __future__ import annotations

import argparse
import copy
import os
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import weights
from . import conditioning
from .data import TOY2D, load_data
from .mlp import TimeMLP
from .unet import TinyUNet

Tensor = torch.Tensor

__all__ = ["TrainConfig", "train", "build_network", "main", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"
DATA_NAMES = ("digits",) + tuple(sorted(TOY2D))
# fields that must not change when a run resumes (--steps, --out, --save, --ckpt-every may)
_FIXED = ("data", "param", "schedule", "seed", "batch_size", "lr", "ema_decay", "grad_clip", "arch")


@dataclass
class TrainConfig:
    data: str = "digits"
    param: str = "eps"
    schedule: str = "ddpm"
    steps: int = 6000
    seed: int = 0
    batch_size: int | None = None  # 128 for digits, 512 for 2D
    lr: float = 1e-3
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    ckpt_every: int = 500
    out: str = "runs/model"
    save: str | None = None  # default OUT/model.safetensors
    device: str = "cpu"
    threads: int | None = 1  # torch CPU threads; None leaves torch's default
    progress: bool = True
    arch: dict = field(default_factory=dict)  # network keyword arguments (empty: the defaults)
    command: str = ""

    def __post_init__(self):
        if self.data not in DATA_NAMES:
            raise ValueError(f"unknown data {self.data!r}; choose one of {DATA_NAMES}")
        conditioning.check_combination(self.schedule, self.param)
        if self.batch_size is None:
            self.batch_size = 128 if self.data == "digits" else 512
        if self.steps < 1 or self.ckpt_every < 1 or self.batch_size < 1:
            raise ValueError("steps, ckpt_every and batch_size must be positive")


def build_network(data: str, arch: dict | None = None) -> nn.Module:
    """The network for a data set: a TinyUNet for digits, a TimeMLP for 2D points."""
    arch = dict(arch or {})
    return TinyUNet(**arch) if data == "digits" else TimeMLP(**arch)


class _StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes its step, checkpoints, and stops."""

    requested = False


class Interrupted(RuntimeError):
    """Training stopped on request after writing a checkpoint."""


def _atomic_torch_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fixed(config: TrainConfig) -> dict:
    return {k: getattr(config, k) for k in _FIXED}


def train(config: TrainConfig, *, _crash_at: int | None = None) -> dict:
    """Run (or resume) training; return a summary dict (steps, final_loss, seconds, save path).

    ``_crash_at`` is for tests: raise RuntimeError right after that step, before anything
    beyond the regular checkpoints is written, as a kill would. torch's thread count is set to
    ``config.threads`` for the run and restored afterwards.
    """
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, _crash_at)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, _crash_at: int | None) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    device = torch.device(config.device)
    data = load_data(config.data)
    schedule = conditioning.make_schedule(config.schedule)

    torch.manual_seed(config.seed)
    net = build_network(config.data, config.arch)
    fn = conditioning.Conditioned(net, config.schedule).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    step, losses, seconds = 0, [], 0.0

    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state["fixed"] != _fixed(config):
            changed = {k: (state["fixed"][k], v) for k, v in _fixed(config).items() if state["fixed"][k] != v}
            raise ValueError(f"{ckpt_path} was made with another configuration {changed} (checkpoint, now); "
                             "use another --out, or --fresh to start over")
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, losses, seconds = state["step"], list(state["losses"]), state["seconds"]
        print(f"resuming {ckpt_path} at step {step}/{config.steps}", flush=True)

    def checkpoint() -> None:
        _atomic_torch_save({"step": step, "model": net.state_dict(), "ema": ema.state_dict(),
                            "optimizer": opt.state_dict(), "generator": gen.get_state(),
                            "torch_rng": torch.get_rng_state(), "losses": losses, "seconds": seconds,
                            "fixed": _fixed(config), "config": asdict(config)}, ckpt_path)

    first = step
    bar = None
    if config.progress:
        from tqdm import tqdm
        bar = tqdm(total=config.steps, initial=step, desc=f"{config.data}-{config.param}-{config.schedule}",
                   dynamic_ncols=True, mininterval=1.0)
    start = time.perf_counter()
    n = len(data)
    while step < config.steps:
        index = torch.randint(0, n, (config.batch_size,), generator=gen)
        x0 = data[index]
        t = conditioning.sample_times(config.schedule, schedule, config.batch_size, gen)
        eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        x_t, alpha, sigma = conditioning.diffuse(schedule, x0, t, eps)
        goal = conditioning.target(config.param, x0, eps, alpha, sigma)
        t_in = conditioning.model_input(config.schedule, schedule, t)
        pred = fn(x_t.to(device), t_in.to(device))
        loss = (pred - goal.to(device)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1.0 - decay)
        losses.append(float(loss.detach()))
        step += 1
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
        if _crash_at is not None and step == _crash_at:
            raise RuntimeError(f"simulated crash after step {step}")
        if step % config.ckpt_every == 0 or step == config.steps or _StopFlag.requested:
            seconds += time.perf_counter() - start
            start = time.perf_counter()
            checkpoint()
            if _StopFlag.requested and step < config.steps:
                if bar is not None:
                    bar.close()
                raise Interrupted(f"stopped at step {step}; checkpoint {ckpt_path} written. "
                                  "Run the same command again to resume.")
    if bar is not None:
        bar.close()
    tail = losses[-max(1, min(500, len(losses) // 10)):]
    final_loss = sum(tail) / len(tail)
    save = Path(config.save) if config.save else out / "model.safetensors"
    card = {
        "model_type": "diffusion",
        "name": save.stem,
        "data": config.data,
        "schedule": config.schedule,
        "param": config.param,
        "time": conditioning.time_mode(config.schedule),
        "network": type(net).__name__,
        "network_config": net.config,
        "parameters": sum(p.numel() for p in net.parameters()),
        "steps": step,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "ema_decay": config.ema_decay,
        "final_loss": round(final_loss, 6),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "command": config.command or "(called from Python)",
        "weights": "EMA",
    }
    weights.save(save, {k: v.float() for k, v in ema.state_dict().items()}, card)
    print(f"trained {config.data} {config.param}/{config.schedule}: steps {first}..{step} in this run, "
          f"{seconds:.1f} s of training in total ({seconds / max(step, 1) * 1000:.1f} ms/step, "
          f"{torch.get_num_threads()} threads); final loss {final_loss:.5f} (mean of the last {len(tail)} steps); "
          f"saved {save}", flush=True)
    return {"steps": step, "final_loss": final_loss, "seconds": seconds, "save": str(save),
            "checkpoint": str(ckpt_path), "card": card}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastdiff_edu.nets.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="digits", choices=DATA_NAMES)
    p.add_argument("--param", default="eps", choices=conditioning.PARAMS)
    p.add_argument("--schedule", default="ddpm", choices=conditioning.SCHEDULES)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="default 128 for digits, 512 for 2D")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999, dest="ema_decay")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--out", default=None, help="run folder (checkpoint); default runs/DATA-PARAM-SCHEDULE")
    p.add_argument("--save", default=None, help="exported .safetensors (default OUT/model.safetensors)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default). One thread is the default because on a "
                        "shared 2-core machine two threads were 12x slower per step than one")
    p.add_argument("--width", type=int, default=None, help="MLP hidden width / UNet base channels")
    p.add_argument("--fresh", action="store_true", help="delete OUT's checkpoint and start over")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    out = args.out or f"runs/{args.data}-{args.param}-{args.schedule}"
    arch = {}
    if args.width is not None:
        arch = {"hidden": args.width} if args.data != "digits" else {"base": args.width}
    config = TrainConfig(data=args.data, param=args.param, schedule=args.schedule, steps=args.steps,
                         seed=args.seed, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         ckpt_every=args.ckpt_every, out=out, save=args.save, device=args.device,
                         threads=args.threads or None,
                         progress=not args.no_progress, arch=arch,
                         command="python -m fastdiff_edu.nets.train " + shlex.join(argv))
    if args.fresh and (Path(out) / CHECKPOINT).exists():
        (Path(out) / CHECKPOINT).unlink()

    def request_stop(signum, frame):
        _StopFlag.requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        train(config)
    except Interrupted as err:
        print(err, file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
