"""fastdiff_edu.generate: K-independent bytes, atomic shards, resume after SIGKILL, validation.

CPU only, at most 2 processes (torchrun with gloo). The subprocess tests pay ~5 s of imports each.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastdiff_edu import generate as gen

ROOT = Path(__file__).resolve().parents[1]


def _env(threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "fastdiff_edu.generate", *map(str, args), "--no-progress"]


def _torchrun(nproc: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
            "-m", "fastdiff_edu.generate", *map(str, args), "--no-progress"]


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard_*.safetensors"))}


def _run(*args) -> None:
    assert gen.main([*map(str, args), "--no-progress"]) == 0


# -- the noise is a function of (seed, index) alone -----------------------------------------------
def test_noise_depends_on_seed_and_index_only():
    from fastdiff_edu import schedules

    sched = schedules.DiscreteVP.ddpm_linear()
    a = gen.sample_noise(3, range(0, 10), (2,), sched)
    b = gen.sample_noise(3, range(4, 7), (2,), sched)
    assert torch.equal(a[4:7], b)
    assert not torch.equal(a, gen.sample_noise(4, range(0, 10), (2,), sched))
    # float64 noise is the float32 draw cast: the same samples whatever the dtype
    c = gen.sample_noise(3, range(0, 10), (2,), sched, dtype=torch.float64)
    assert torch.equal(c.float(), a)


# -- one process vs two: identical bytes, also for a stochastic solver -----------------------------
def test_two_processes_match_one_byte_for_byte(tmp_path):
    args = ["--model", "ring-eps", "--solver", "sde-dpm-solver++2m", "--nfe", "8", "--num-samples", "150",
            "--shard-size", "32", "--seed", "7"]
    one, two, small = tmp_path / "k1", tmp_path / "k2", tmp_path / "b8"
    _run(*args, "--out", one)
    _run(*args, "--batch-size", "8", "--out", small)  # stochastic solvers run whole shards anyway
    proc = subprocess.run(_torchrun(2, *args, "--out", two), env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "samples/s with 2 process(es)" in proc.stdout
    assert _shard_bytes(one) == _shard_bytes(two) == _shard_bytes(small)
    assert len(_shard_bytes(one)) == 5
    x = gen.load_samples(two)
    assert x.shape == (150, 2) and torch.isfinite(x).all()
    assert torch.equal(x, gen.load_samples(one))
    manifest = gen.read_manifest(two)
    assert manifest["complete"] and manifest["last_run"]["world_size"] == 2


@pytest.mark.parametrize("source", [["--problem", "ring2d"], ["--model", "ring-eps"]])
def test_batch_size_does_not_change_deterministic_samples(tmp_path, source):
    """Same noise whatever the batch size; the exact problem (per-sample arithmetic) gives the same
    bytes, a network's matrix products may round differently for other batch sizes (BLAS picks
    kernels by shape), so there the samples agree to float32 rounding only."""
    args = [*source, "--solver", "dpm-solver++2m", "--nfe", "6", "--num-samples", "70", "--shard-size", "32"]
    _run(*args, "--out", tmp_path / "a")
    _run(*args, "--batch-size", "5", "--out", tmp_path / "b")
    a, indices = gen.load_samples(tmp_path / "a", return_indices=True)
    b = gen.load_samples(tmp_path / "b")
    assert torch.equal(indices, torch.arange(70))
    if source[0] == "--problem":
        assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- SIGKILL mid-run, resume with two processes: no gap, no duplicate, same bytes ----------------------
def test_resume_after_sigkill(tmp_path):
    args = ["--model", "digits-eps", "--solver", "dpm-solver++2m", "--nfe", "10", "--num-samples", "64",
            "--shard-size", "8", "--seed", "1"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("shard_*.safetensors")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    first = sorted(p.name for p in out.glob("shard_*.safetensors"))
    assert 1 <= len(first) < 8, first  # really interrupted mid-way
    assert not gen.read_manifest(out)["complete"]
    with pytest.raises(gen.GenerateError, match="run the same command again"):
        gen.load_samples(out)
    part, idx = gen.load_samples(out, partial=True, return_indices=True)
    assert part.shape[0] == idx.numel() == 8 * len(first)
    kept = {name: (out / name).read_bytes() for name in first}
    (out / ".shard_000007.safetensors.999.tmp").write_bytes(b"half a shard")  # what a kill can leave

    resumed = subprocess.run(_torchrun(2, *args, "--out", out), env=_env(), capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"({8 * len(first)} already there)" in resumed.stdout
    assert not list(out.glob("*.tmp"))
    assert all((out / name).read_bytes() == data for name, data in kept.items())  # not redone

    _run(*args, "--out", ref)  # uninterrupted, one process
    assert _shard_bytes(out) == _shard_bytes(ref)
    x, indices = gen.load_samples(out, return_indices=True)
    assert torch.equal(indices, torch.arange(64))
    assert x.shape == (64, 1, 8, 8) and torch.equal(x, gen.load_samples(ref))
    assert gen.read_manifest(out)["complete"]


def test_finished_run_is_not_redone(tmp_path, capsys):
    args = ["--problem", "ring2d", "--solver", "ddim", "--nfe", "4", "--num-samples", "20", "--shard-size", "8",
            "--out", tmp_path]
    _run(*args)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard_*")}
    capsys.readouterr()
    _run(*args)
    assert "0 new samples (20 already there)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard_*")} == before


# -- validation: exit code 2, one line, nothing sampled ------------------------------------------
BASE = ["--nfe", "10", "--num-samples", "16", "--shard-size", "8"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "ring-eps", "--solver", "dpm-solver++9m"], r"unknown sampler 'dpm-solver\+\+9m'.*Available: .*ddim"),
    (["--model", "no-such-model", "--solver", "ddim"], "unknown model 'no-such-model'.*digits-eps.*ring-eps"),
    (["--model", "/nowhere/net.safetensors", "--solver", "ddim"], "no weight file"),
    (["--problem", "ring3d", "--solver", "ddim"], "unknown problem 'ring3d'; choose one of .*ring2d"),
    (["--solver", "ddim"], "give --model"),
    (["--model", "ring-eps", "--solver", "dpm-solver-3", "--nfe", "2"], "dpm-solver-3 needs --nfe >= 3, got 2"),
    (["--model", "ring-eps", "--solver", "ddim", "--nfe", "0"], "--nfe must be an integer >= 1, got 0"),
    (["--model", "ring-eps", "--solver", "rk45"], "adaptive"),
    (["--model", "ring-eps", "--solver", "ddim", "--grid", "zigzag"], "unknown grid 'zigzag'"),
    (["--model", "ring-eps", "--solver", "ddim", "--dtype", "float8"], "unknown --dtype 'float8'"),
    (["--model", "ring-eps", "--solver", "ddim", "--batch-size", "9"], r"--batch-size must be .*\[1, --shard-size=8\]"),
    (["--model", "ring-eps", "--solver", "ddim", "--num-samples", "0"], "--num-samples must be an integer >= 1"),
    (["--model", "ring-eps", "--solver", "ddim", "--nfe", "ten"], "invalid int value: 'ten'"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    import re

    out = tmp_path / "out"
    code = gen.main(BASE + argv + ["--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fastdiff_edu.generate: error: "), err
    assert re.search(message, err), err
    assert not out.exists()  # nothing written, nothing sampled


def test_folder_of_another_configuration_is_refused(tmp_path, capsys):
    args = ["--problem", "ring2d", "--solver", "ddim", "--nfe", "4", "--num-samples", "16", "--shard-size", "8",
            "--out", tmp_path]
    _run(*args, "--seed", "0")
    before = _shard_bytes(tmp_path)
    capsys.readouterr()
    assert gen.main([*map(str, args), "--seed", "1", "--solver", "euler", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different configuration" in err and "seed: 0 there, 1 here" in err
    assert "solver: 'ddim' there, 'euler' here" in err
    assert _shard_bytes(tmp_path) == before

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shard_000000.safetensors").write_bytes(b"x")
    assert gen.main([*map(str, args[:-1]), str(stray), "--no-progress"]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_cli_exit_code_and_message():
    proc = subprocess.run(_cli("--model", "ring-eps", "--solver", "nope", "--nfe", "10", "--num-samples", "8",
                               "--out", "/nonexistent/never"), env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown sampler 'nope'" in proc.stderr
    assert not Path("/nonexistent/never").exists()


def test_manifest_records_the_configuration(tmp_path):
    _run("--problem", "ring2d", "--solver", "ddim", "--nfe", "4", "--num-samples", "10", "--grid", "logsnr",
         "--out", tmp_path)
    manifest = json.loads((tmp_path / gen.MANIFEST).read_text())
    config = manifest["config"]
    assert config["problem"] == "ring2d" and config["grid"] == "logsnr" and config["sample_shape"] == [2]
    assert manifest["num_shards"] == 1 and manifest["complete"]
    assert manifest["last_run"]["new_samples"] == 10 and manifest["last_run"]["samples_per_second"] > 0
