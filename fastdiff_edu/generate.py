"""Many samples for evaluation, in one process or many under ``torchrun``.

    python -m fastdiff_edu.generate --model digits-eps --solver dpm-solver++2m --nfe 10 \\
        --num-samples 50000 --out runs/digits-dpmpp2m-10
    torchrun --nproc_per_node=4 -m fastdiff_edu.generate ...same arguments...
    x = fastdiff_edu.generate.load_samples("runs/digits-dpmpp2m-10")   # (50000, 1, 8, 8), by index

How the work is cut, and why the result does not depend on how many processes run it:

* The samples ``0 .. M-1`` are cut into **shards** of ``--shard-size`` consecutive indices. The
  shard boundaries depend only on ``M`` and the shard size (part of the configuration), never on
  the number of processes ``K`` or on ``--batch-size``.
* Sample ``i`` starts from noise drawn by its own generator, seeded from a hash of
  ``(seed, i)``; a stochastic solver draws its per-step noise from a generator seeded from a hash
  of ``(seed, shard index)`` and runs each shard in one call. So every shard's bytes are a
  function of the configuration and the shard index alone.
* The shards still to do are dealt round-robin to the ranks. Each is written atomically
  (temporary file, then rename) as ``shard_000123.safetensors`` holding ``samples`` and their
  ``indices``; ``manifest.json`` records the configuration. Run the same command again after an
  interruption (with any ``K``) and it does only the missing shards.
* The arithmetic itself must not change either: on the CPU each process uses one intra-op thread
  unless ``--threads`` says otherwise (a convolution's rounding depends on the thread count;
  torchrun also defaults to one). ``--batch-size`` (how a shard is split into solver calls;
  default: the whole shard) never changes the noise, but a network's matrix products may round
  differently for another batch shape (BLAS picks kernels by shape: ring-eps moves by ~1e-6 between
  batches of 32 and 5), so byte equality across batch sizes holds for the exact problems only;
  keep the default, or one batch size per folder, for byte-stable resumes.
  CPU and CUDA runs differ in the last bits, so the device type is part of the configuration.

Bad arguments are refused before any sampling, with exit code 2 and a one-line message.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["GenerateConfig", "GenerateError", "generate", "load_samples", "read_manifest", "main",
           "sample_noise", "MANIFEST", "FORMAT"]

MANIFEST = "manifest.json"
FORMAT = "fastdiff_edu.generate/1"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_SHARD_SIZE = 256


class GenerateError(ValueError):
    """An argument or an output folder that ``generate`` refuses (the CLI exits with code 2)."""


# -- the configuration: everything that decides the bytes of a shard -----------------------------
@dataclass(frozen=True)
class GenerateConfig:
    model: str | None             # shipped name or .safetensors path (None for an exact problem)
    model_sha256: str | None      # the weight file's hash from its card: the model's identity
    problem: str | None           # "gmm64" | "ring2d" | "classes64" (exact eps model, DDPM schedule)
    solver: str
    nfe: int
    grid: str | None              # None: the solver's default grid
    num_samples: int
    seed: int
    shard_size: int
    dtype: str
    device_type: str              # "cpu" or "cuda": the two do not give the same bytes
    sample_shape: tuple

    def fingerprint(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_samples)


def _seed_of(seed: int, *key) -> int:
    """A 63-bit generator seed from ``seed`` and a key: independent streams per sample/shard."""
    text = ":".join(map(str, (seed, *key))).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def sample_noise(seed: int, indices, shape: tuple, schedule, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The starting noise ``x_T`` of the samples ``indices``: each drawn (standard normal, float32,
    on the CPU) by its own generator seeded from ``(seed, index)``, then cast and scaled by the
    schedule's prior standard deviation. Sample ``i`` gets the same noise in every run."""
    gen = torch.Generator()
    rows = [torch.randn(tuple(shape), generator=gen.manual_seed(_seed_of(seed, "x_T", int(i))))
            for i in indices]
    noise = torch.stack(rows) if rows else torch.empty((0, *shape))
    return noise.to(device=device, dtype=dtype) * schedule.prior_std


# -- small file helpers ---------------------------------------------------------------------------
def _shard_path(out: Path, shard: int) -> Path:
    return out / f"shard_{shard:06d}.safetensors"


def _shard_files(out: Path) -> dict[int, Path]:
    found = {}
    if out.is_dir():
        for p in out.glob("shard_*.safetensors"):
            try:
                found[int(p.stem.split("_", 1)[1])] = p
            except ValueError:
                continue
    return found


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def read_manifest(out: str | os.PathLike) -> dict:
    """The manifest of an output folder (configuration, fingerprint, completion, speed)."""
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GenerateError(f"{out} has no {MANIFEST}: not a folder written by fastdiff_edu.generate") from None


def _shard_fingerprint(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["fastdiff_edu.generate"])["fingerprint"]
    except Exception:  # unreadable or foreign: treat as not done (it is rewritten)
        return None


# -- building the model and checking the arguments ---------------------------------------------
def _build_model(model: str | None, problem: str | None, device, dtype):
    """(Prediction, sample shape of one sample, sha256 or None) for a shipped/own model or a problem."""
    from . import nets, problems, schedules
    from .weights import WeightsError

    if (model is None) == (problem is None):
        raise GenerateError("give exactly one of --model (a shipped name or a .safetensors path) and --problem")
    if problem is not None:
        if problem not in problems.PROBLEMS:
            raise GenerateError(f"unknown problem {problem!r}; choose one of {', '.join(sorted(problems.PROBLEMS))}")
        mixture = problems.get(problem)
        pred = mixture.prediction(schedules.DiscreteVP.ddpm_linear(), "eps")
        return pred, (mixture.dim,), None
    try:
        pred = nets.load(model, device=device, dtype=dtype)
    except (ValueError, WeightsError) as err:
        raise GenerateError(str(err).splitlines()[0]) from None
    return pred, tuple(pred.sample_shape(1)[1:]), pred.card.get("sha256")


def _check_solver(solver: str, nfe: int, grid: str | None):
    from . import solvers, timesteps

    if solver not in solvers.REGISTRY:
        try:
            solvers.registry.get(solver)
        except KeyError as err:
            raise GenerateError(err.args[0]) from None
    spec = solvers.REGISTRY[solver]
    if spec.adaptive:
        raise GenerateError(f"{solver} is adaptive (it chooses its own steps); generate needs a fixed NFE budget: "
                            f"choose another solver")
    if not isinstance(nfe, int) or nfe < spec.min_nfe:
        raise GenerateError(f"{solver} needs --nfe >= {spec.min_nfe}, got {nfe}")
    if spec.steps_for_nfe(nfe, dict(spec.defaults)) < 1:
        raise GenerateError(f"{solver}: an NFE budget of {nfe} buys no step; raise --nfe")
    if grid is not None:
        kind = timesteps.ALIASES.get(grid, grid)
        if kind not in timesteps.KINDS:
            raise GenerateError(f"unknown grid {grid!r}; choose one of {', '.join(timesteps.KINDS)}")
    return spec


def _check_out(out: Path, config: GenerateConfig) -> None:
    """Refuse a folder holding another configuration's manifest, or shards without a manifest."""
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {out} exists and is not a folder")
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
            old_config = old["config"]
        except (ValueError, KeyError):
            raise GenerateError(f"{manifest} is not a generate manifest; choose another --out") from None
        new_config = json.loads(json.dumps(asdict(config)))  # tuples -> lists, as stored
        if old_config != new_config:
            diff = "; ".join(f"{k}: {old_config.get(k)!r} there, {v!r} here"
                             for k, v in new_config.items() if old_config.get(k) != v)
            raise GenerateError(f"{out} holds samples of a different configuration ({diff}); "
                                "use another --out or delete that folder")
    elif _shard_files(out):
        raise GenerateError(f"{out} holds shards but no {MANIFEST} (another tool or configuration); "
                            "use another --out or delete them")


def _resolve_device(device: str | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise GenerateError(f"bad --device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerateError("--device cuda, but no CUDA device is available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise GenerateError(f"--device must be cpu or cuda[:i], got {device!r}")
    return dev


# -- distributed helpers -------------------------------------------------------------------------
def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class _Group:
    """torch.distributed when run under torchrun with WORLD_SIZE > 1, otherwise a no-op."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world = rank, world
        self.active = world > 1
        if self.active:
            import torch.distributed as dist

            self.dist = dist
            if not dist.is_initialized():
                backend = "nccl" if device.type == "cuda" else "gloo"
                if device.type == "cuda":
                    torch.cuda.set_device(device)
                dist.init_process_group(backend=backend)
                self.owned = True
            else:
                self.owned = False

    def barrier(self):
        if self.active:
            self.dist.barrier()

    def close(self):
        if self.active and self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


# -- the work ------------------------------------------------------------------------------------
def _sample_shard(model, spec, config: GenerateConfig, shard: int, batch_size: int, device, dtype):
    from .solvers import sample

    start, stop = config.shard_range(shard)
    indices = torch.arange(start, stop, dtype=torch.int64)
    x_T = sample_noise(config.seed, range(start, stop), config.sample_shape, model.schedule,
                       dtype=dtype, device=device)
    kw = dict(nfe=config.nfe, grid=config.grid)
    if spec.stochastic:  # one call per shard, its noise from (seed, shard): independent of K and batch size
        gen = torch.Generator(device=device).manual_seed(_seed_of(config.seed, "solver", shard))
        x0 = sample(model, x_T, config.solver, generator=gen, **kw)
    else:
        x0 = torch.cat([sample(model, chunk, config.solver, **kw) for chunk in x_T.split(batch_size)])
    return x0, indices


def _write_shard(out: Path, shard: int, x0: torch.Tensor, indices: torch.Tensor, config: GenerateConfig):
    from safetensors.torch import save_file

    tensors = {"samples": x0.detach().to("cpu").contiguous(), "indices": indices.contiguous()}
    # one metadata key: safetensors writes several in a per-process random order (not byte-stable)
    meta = {"fastdiff_edu.generate": json.dumps({"fingerprint": config.fingerprint(), "shard": shard,
                                                  "format": FORMAT}, sort_keys=True)}
    _atomic_write(_shard_path(out, shard), lambda p: save_file(tensors, str(p), metadata=meta))


def generate(*, model: str | None = None, problem: str | None = None, solver: str, nfe: int, num_samples: int,
             out: str | os.PathLike, seed: int = 0, batch_size: int | None = None,
             shard_size: int = DEFAULT_SHARD_SIZE, device: str | None = None, dtype: str = "float32",
             grid: str | None = None, threads: int | None = None, progress: bool = True) -> dict:
    """Write ``num_samples`` samples of ``model`` (or the exact ``problem``) drawn with ``solver``
    at ``nfe`` into ``out``; see the module docstring. Under ``torchrun`` each rank calls this and
    they share the work. Returns the (rank 0) manifest; raises :class:`GenerateError` for bad
    arguments before any sampling.

    ``threads`` sets torch's intra-op threads per process for the run (CPU default: 1). The bytes of
    a convolution on the CPU depend on the thread count (oneDNN splits its sums per thread), so
    the default keeps one thread per process, like torchrun does: scale with processes instead.
    """
    rank, world, local_rank = _dist_env()
    # ---- validate everything before any work
    for name, value, low in (("--num-samples", num_samples, 1), ("--nfe", nfe, 1), ("--shard-size", shard_size, 1),
                             ("--seed", seed, 0)):
        if not isinstance(value, int) or value < low:
            raise GenerateError(f"{name} must be an integer >= {low}, got {value!r}")
    batch_size = shard_size if batch_size is None else batch_size
    if not isinstance(batch_size, int) or not 1 <= batch_size <= shard_size:
        raise GenerateError(f"--batch-size must be an integer in [1, --shard-size={shard_size}], got {batch_size!r} "
                            "(raise --shard-size, which is part of the configuration, for bigger batches)")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise GenerateError(f"--threads must be an integer >= 1, got {threads!r}")
    if dtype not in DTYPES:
        raise GenerateError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    spec = _check_solver(solver, nfe, grid)
    dev = _resolve_device(device, local_rank)
    torch_dtype = DTYPES[dtype]
    pred, shape, sha = _build_model(model, problem, dev, torch_dtype)
    from . import timesteps as _ts

    grid = None if grid is None else _ts.ALIASES.get(grid, grid)
    try:  # the grid this budget buys must exist for this schedule (e.g. discrete spacings need DDPM)
        _ts.make(pred.schedule, grid or spec.default_grid, spec.steps_for_nfe(nfe, dict(spec.defaults)))
    except ValueError as err:
        raise GenerateError(f"{solver} with grid {grid or spec.default_grid!r}: {err}") from None
    model_id = None if model is None else (str(model) if str(model) in _shipped() else str(Path(model).resolve()))
    config = GenerateConfig(model=model_id, model_sha256=sha, problem=problem, solver=solver, nfe=nfe, grid=grid,
                            num_samples=num_samples, seed=seed, shard_size=shard_size, dtype=dtype,
                            device_type=dev.type, sample_shape=tuple(shape))
    out = Path(out)
    _check_out(out, config)

    # ---- set up: the manifest first, then everyone lists what is left
    threads_before = torch.get_num_threads()
    if threads is None and dev.type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    group = _Group(rank, world, dev)
    try:
        t_start = time.perf_counter()
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            for tmp in out.glob(".shard_*.tmp"):  # left by a killed run
                tmp.unlink(missing_ok=True)
            manifest = {"format": FORMAT, "config": asdict(config), "fingerprint": config.fingerprint(),
                        "num_shards": config.num_shards, "complete": False}
            if (out / MANIFEST).exists():
                manifest = {**read_manifest(out), "complete": False}
            _write_json(out / MANIFEST, manifest)
        group.barrier()
        files = _shard_files(out)
        done = {s for s, p in files.items() if s < config.num_shards and _shard_fingerprint(p) == config.fingerprint()}
        group.barrier()  # nobody writes before everyone has listed
        todo = [s for s in range(config.num_shards) if s not in done]
        mine = todo[rank::world]
        sizes = [config.shard_range(s)[1] - config.shard_range(s)[0] for s in range(config.num_shards)]
        already = sum(sizes[s] for s in done)

        bar = None
        if rank == 0 and progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_samples, initial=already, unit="sample", desc=f"{solver} nfe={nfe} x{world}",
                       file=sys.stderr, dynamic_ncols=True)
        t_work = time.perf_counter()
        with torch.inference_mode():
            for shard in mine:
                x0, indices = _sample_shard(pred, spec, config, shard, batch_size, dev, torch_dtype)
                _write_shard(out, shard, x0, indices, config)
                if bar is not None:  # everyone's progress, as seen on disk
                    on_disk = sum(sizes[s] for s in _shard_files(out) if s < config.num_shards)
                    bar.update(max(on_disk - bar.n, 0))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        group.barrier()
        t_end = time.perf_counter()
        if bar is not None:
            bar.update(num_samples - bar.n)
            bar.close()

        new = num_samples - already
        work_s = t_end - t_work
        stats = {"new_samples": new, "resumed_samples": already, "world_size": world, "device": str(dev),
                 "threads_per_process": torch.get_num_threads(), "batch_size": batch_size,
                 "work_seconds": round(work_s, 3), "total_seconds": round(t_end - t_start, 3),
                 "samples_per_second": round(new / work_s, 2) if work_s > 0 and new else None}
        if rank == 0:
            missing = [s for s in range(config.num_shards) if s not in _shard_files(out)]
            if missing:
                raise RuntimeError(f"shards {missing[:5]} are missing after the run; run the command again to resume")
            manifest = {**read_manifest(out), "complete": True, "last_run": stats}
            _write_json(out / MANIFEST, manifest)
            rate = f"{stats['samples_per_second']:.1f} samples/s" if stats["samples_per_second"] else "nothing to do"
            print(f"fastdiff_edu.generate: {new} new samples ({already} already there) of {num_samples} in "
                  f"{work_s:.2f} s: {rate} with {world} process(es) on {dev.type} -> {out}", flush=True)
            return manifest
        return {"config": asdict(config), "last_run": stats}
    finally:
        group.close()
        torch.set_num_threads(threads_before)


def _shipped() -> list[str]:
    from .nets import shipped_models

    return shipped_models()


# -- reading the result -------------------------------------------------------------------------
def load_samples(out: str | os.PathLike, *, partial: bool = False, return_indices: bool = False):
    """All samples of an output folder as one tensor ordered by index (``(M, *sample_shape)``).

    Checks that every shard belongs to the folder's configuration and that the indices are
    exactly ``0 .. M-1``; ``partial=True`` returns what is there (with ``return_indices=True``
    also the indices) instead of refusing an unfinished run.
    """
    from safetensors.torch import load_file

    out = Path(out)
    manifest = read_manifest(out)
    fingerprint, config = manifest["fingerprint"], manifest["config"]
    parts, idx = [], []
    for shard, path in sorted(_shard_files(out).items()):
        if _shard_fingerprint(path) != fingerprint:
            raise GenerateError(f"{path} does not belong to {out}'s configuration")
        tensors = load_file(str(path))
        parts.append(tensors["samples"])
        idx.append(tensors["indices"])
    n = config["num_samples"]
    shape = tuple(config["sample_shape"])
    samples = torch.cat(parts) if parts else torch.empty((0, *shape), dtype=DTYPES[config["dtype"]])
    indices = torch.cat(idx) if idx else torch.empty(0, dtype=torch.int64)
    order = torch.argsort(indices)
    samples, indices = samples[order], indices[order]
    if indices.numel() != torch.unique(indices).numel():
        raise GenerateError(f"{out}: some sample indices appear twice")
    if not partial and not torch.equal(indices, torch.arange(n)):
        raise GenerateError(f"{out} holds {indices.numel()} of {n} samples; run the same command again to finish "
                            "(or load_samples(..., partial=True))")
    return (samples, indices) if return_indices else samples


# -- the command line ---------------------------------------------------------------------------
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (instead of argparse's usage block)
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m fastdiff_edu.generate",
                description="Generate many samples with a fast sampler, in one process or under torchrun.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="shipped model name (digits-eps, moons-eps, ring-eps) or a .safetensors path")
    src.add_argument("--problem", help="an exact problem as the model: gmm64, ring2d or classes64 (DDPM schedule)")
    p.add_argument("--solver", required=True, help="a registered sampler name, e.g. dpm-solver++2m")
    p.add_argument("--nfe", type=int, required=True, help="model evaluations per sample (the budget)")
    p.add_argument("--num-samples", type=int, required=True, help="how many samples in all")
    p.add_argument("--out", required=True, help="output folder (shards + manifest.json); rerun to resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"samples per shard file (part of the configuration; default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per solver call, at most the shard size (default: the shard size); "
                        "stochastic solvers always run whole shards")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available; cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--grid", default=None, help="timestep grid instead of the solver's default")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per process (CPU default 1: the same bytes whatever the number of processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.model is None and args.problem is None:
            raise GenerateError("give --model (a shipped name or a .safetensors path) or --problem")
        generate(model=args.model, problem=args.problem, solver=args.solver, nfe=args.nfe,
                 num_samples=args.num_samples, out=args.out, seed=args.seed, batch_size=args.batch_size,
                 shard_size=args.shard_size, device=args.device, dtype=args.dtype, grid=args.grid,
                 threads=args.threads, progress=not args.no_progress)
    except (_UsageError, GenerateError) as err:
        print(f"fastdiff_edu.generate: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
