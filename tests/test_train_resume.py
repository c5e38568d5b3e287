"""Training is deterministic and resumable bit for bit (fastdiff_edu.nets.train).

Tiny networks (a few thousand parameters) and a few dozen steps: seconds, not minutes.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastdiff_edu.nets import train as train_module
from fastdiff_edu.nets.train import CHECKPOINT, Interrupted, TrainConfig, train
from tests._helpers import single_thread  # noqa: F401 (one torch thread, as training uses)

ROOT = Path(__file__).resolve().parents[1]




def _tiny(out, data="digits", param="eps", schedule="ddpm", **kw):
    arch = {"base": 8} if data == "digits" else {"hidden": 16, "depth": 2}
    base = dict(data=data, param=param, schedule=schedule, steps=12, batch_size=16, ckpt_every=4,
                progress=False, arch=arch, out=str(out))
    return TrainConfig(**{**base, **kw})


def _state(result):
    ckpt = torch.load(result["checkpoint"], weights_only=False)
    return ckpt, load_file(result["save"])


def _assert_identical(a, b):
    (ca, ea), (cb, eb) = _state(a), _state(b)
    assert ca["step"] == cb["step"]
    assert ca["losses"] == cb["losses"]  # the same steps, in the same order, none twice
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for key in ea:
        assert torch.equal(ea[key], eb[key]), key  # the exported EMA weights
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert torch.equal(ca["generator"], cb["generator"])


@pytest.mark.parametrize("data,param,schedule", [("digits", "eps", "ddpm"), ("moons", "v", "cosine"),
                                                 ("ring", "x0", "edm")])
def test_crash_and_resume_equals_uninterrupted_run(tmp_path, data, param, schedule):
    whole = train(_tiny(tmp_path / "whole", data, param, schedule))
    with pytest.raises(RuntimeError, match="simulated crash after step 7"):
        train(_tiny(tmp_path / "crashed", data, param, schedule), _crash_at=7)  # last checkpoint: step 4
    assert torch.load(tmp_path / "crashed" / CHECKPOINT, weights_only=False)["step"] == 4
    resumed = train(_tiny(tmp_path / "crashed", data, param, schedule))
    _assert_identical(whole, resumed)


def test_seed_determines_the_run(tmp_path):
    a = train(_tiny(tmp_path / "a", steps=5))
    b = train(_tiny(tmp_path / "b", steps=5))
    c = train(_tiny(tmp_path / "c", steps=5, seed=1))
    _assert_identical(a, b)
    assert not torch.equal(_state(a)[1]["inp.weight"], _state(c)[1]["inp.weight"])


def test_continuing_a_finished_run_and_refusing_a_changed_one(tmp_path):
    whole = train(_tiny(tmp_path / "whole", steps=10))
    train(_tiny(tmp_path / "two", steps=6))
    longer = train(_tiny(tmp_path / "two", steps=10))  # raise --steps: continue
    _assert_identical(whole, longer)
    with pytest.raises(ValueError, match="another configuration.*lr"):
        train(_tiny(tmp_path / "two", steps=12, lr=5e-4))


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="variance-preserving"):
        _tiny(tmp_path, param="v", schedule="edm")
    with pytest.raises(ValueError, match="unknown data"):
        _tiny(tmp_path, data="cifar")


COMMAND = [sys.executable, "-m", "fastdiff_edu.nets.train", "--data", "moons", "--steps", "3000",
           "--ckpt-every", "5", "--width", "16", "--batch-size", "32", "--no-progress", "--seed", "3"]


def test_stop_request_checkpoints_and_resumes(tmp_path):
    """What SIGINT/SIGTERM do (the CLI's handler sets this flag): finish the step, checkpoint, stop."""
    train_module._StopFlag.requested = True
    try:
        with pytest.raises(Interrupted, match="stopped at step 1.*Run the same command again"):
            train(_tiny(tmp_path / "stopped"))
    finally:
        train_module._StopFlag.requested = False
    assert torch.load(tmp_path / "stopped" / CHECKPOINT, weights_only=False)["step"] == 1
    _assert_identical(train(_tiny(tmp_path / "whole")), train(_tiny(tmp_path / "stopped")))


def test_killed_process_resumes_bit_identically(tmp_path):
    """A real training process killed with SIGKILL (no chance to save anything), then the same
    run again: the result equals an uninterrupted run. (SIGTERM/SIGINT only set the stop flag
    tested above; a second process start would cost ~10 s on the shared machine.)"""
    how = signal.SIGKILL
    out = tmp_path / "run"
    command = COMMAND + ["--out", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (out / CHECKPOINT).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(how)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == -signal.SIGKILL, output
    stopped_at = torch.load(out / CHECKPOINT, weights_only=False)["step"]
    assert 0 < stopped_at < 3000
    # the same run again, to a nearer end (--steps may change between runs, nothing else may);
    # resumed in this process, which is what the same command would do, without a second start-up
    total = stopped_at + 23  # not a multiple of --ckpt-every: the run ends between checkpoints
    config = dict(data="moons", ckpt_every=5, arch={"hidden": 16}, batch_size=32, seed=3, progress=False)
    resumed = train(TrainConfig(steps=total, out=str(out), **config))
    assert resumed["steps"] == total
    whole = train(TrainConfig(steps=total, out=str(tmp_path / "whole"), **config))
    _assert_identical(whole, resumed)
