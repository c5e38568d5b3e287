"""The trained models package (fastdiff_edu.nets): data, loader, shipped weights, FD-digits.

No training of real models here: the shipped weights are loaded and sampled. The quality
bounds were set from measurements (python -m fastdiff_edu.nets.evaluate) with a margin.
"""
import json
import shutil

import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import metrics, nets, weights
from fastdiff_edu.prediction import Prediction
from tests._helpers import single_thread  # noqa: F401 (one torch thread, as training uses)

SHIPPED = ("digits-eps", "moons-eps", "ring-eps")




def test_digits_data_and_split():
    x, y = nets.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0 and y.min() == 0 and y.max() == 9
    xt, yt = nets.digits_split("train")
    xh, yh = nets.digits_split("heldout")
    assert len(xt) == 1438 and len(xh) == 359
    # a partition of the whole set: every image appears exactly as often as in the full set
    both = torch.cat([xt, xh]).reshape(1797, -1)
    assert torch.equal(both.sort(dim=0).values, x.reshape(1797, -1).sort(dim=0).values)
    assert torch.equal(torch.bincount(torch.cat([yt, yh])), torch.bincount(y))
    assert torch.equal(nets.digits_split("heldout")[0], xh)  # fixed split
    with pytest.raises(ValueError, match="split"):
        nets.digits_split("test")


def test_toy2d_sets_are_fixed():
    assert torch.equal(nets.toy2d("ring", 100), nets.toy2d("ring", 100))
    assert nets.toy2d("moons", 50).shape == (50, 2)
    with pytest.raises(ValueError, match="ring"):
        nets.toy2d("spiral")


def test_shipped_models_and_cards():
    assert set(SHIPPED) <= set(nets.shipped_models())
    assert "digits-classifier" not in nets.shipped_models()
    for name in SHIPPED:
        card = json.loads((weights.SHIPPED_DIR / f"{name}.json").read_text())
        assert card["schedule"] == "ddpm" and card["param"] == "eps"
        assert card["command"].startswith("python -m fastdiff_edu.nets.train")
        for key in ("data", "steps", "final_loss", "train_seconds", "sha256", "network_config"):
            assert key in card, (name, key)
    total = sum(p.stat().st_size for n in SHIPPED + ("digits-classifier",)
                for p in weights.SHIPPED_DIR.glob(f"{n}.*"))
    assert total < 5e6


def test_unknown_name_lists_shipped_models():
    with pytest.raises(ValueError, match="unknown model 'digits-x0'.*digits-eps.*moons-eps.*ring-eps"):
        nets.load("digits-x0")
    with pytest.raises(ValueError, match="not a diffusion model"):
        nets.load(weights.SHIPPED_DIR / "digits-classifier.safetensors")


def test_tampered_copy_of_a_shipped_file_is_refused(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(weights.SHIPPED_DIR / f"ring-eps{suffix}", tmp_path / f"ring-eps{suffix}")
    copy = tmp_path / "ring-eps.safetensors"
    assert isinstance(nets.load(copy), Prediction)  # an intact copy loads
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one weight
    copy.write_bytes(bytes(raw))
    with pytest.raises(weights.WeightsError, match="does not match its card.*python -m fastdiff_edu.nets.train"):
        nets.load(copy)


@pytest.mark.parametrize("name", SHIPPED)
def test_loader_returns_a_prediction_that_samples(name):
    model = nets.load(name)
    assert isinstance(model, Prediction)
    assert model.kind == "eps" and model.time == "label"
    assert repr(model.schedule) == repr(fd.schedules.DiscreteVP.ddpm_linear())
    assert torch.allclose(model.schedule.alphas_cumprod, fd.schedules.DiscreteVP.ddpm_linear().alphas_cumprod)
    shape = model.sample_shape(8)
    x_T = model.schedule.prior_sample(shape, generator=torch.Generator().manual_seed(0))
    x0, info = fd.sample(model, x_T, "dpm-solver++2m", nfe=10, return_info=True)
    assert x0.shape == shape and x0.dtype == torch.float32 and info.nfe == 10
    assert torch.isfinite(x0).all()
    # float64 noise: the float32 net is called in its own dtype, the samples stay float64
    x64 = fd.sample(model, x_T.double(), "dpm-solver++2m", nfe=10)
    assert x64.dtype == torch.float64 and (x64 - x0.double()).abs().max() < 1e-3
    # deterministic: the same noise gives the same samples
    assert torch.equal(fd.sample(model, x_T, "dpm-solver++2m", nfe=10), x0)


def test_fd_digits_floor_and_noise():
    held = nets.digits_split("heldout")[0]
    floor = nets.fd_floor()
    noise = nets.fd_digits(torch.randn(held.shape, generator=torch.Generator().manual_seed(0)))
    assert floor == pytest.approx(nets.fd_digits(held))
    assert floor == pytest.approx(FLOOR, abs=0.5)
    assert noise > 20 * floor
    assert nets.fd_digits(nets.digits_split("train")[0]) < 1e-6  # the reference itself
    hist = nets.class_histogram(held)
    assert hist.sum() == pytest.approx(1.0) and hist.min() > 0.07  # 98 % held-out accuracy, balanced classes
    with pytest.raises(ValueError, match="shape"):
        nets.fd_digits(torch.zeros(10, 3, 8, 8))


def test_shipped_digits_model_quality_at_nfe_20():
    """359 samples, as many as held-out digits, so that the value compares with the floor."""
    model = nets.load("digits-eps")
    x_T = model.schedule.prior_sample(model.sample_shape(359), generator=torch.Generator().manual_seed(0))
    x0 = fd.sample(model, x_T, "dpm-solver++2m", nfe=20)
    fd_value = nets.fd_digits(x0)
    assert fd_value < DIGITS_FD_BOUND < FLOOR, fd_value
    assert nets.class_histogram(x0).min() > 0.03  # every digit is generated


@pytest.mark.parametrize("name", ["moons-eps", "ring-eps"])
def test_shipped_2d_models_match_their_data(name):
    model = nets.load(name)
    x_T = model.schedule.prior_sample((2000, 2), generator=torch.Generator().manual_seed(0))
    x0 = fd.sample(model, x_T, "dpm-solver++2m", nfe=20)
    data = model.card["data"]
    sw = metrics.sliced_wasserstein(x0, nets.toy2d(data, 2000, seed=101))
    assert sw < SW_BOUND[name], sw


# measured (2026-11-26, python -m fastdiff_edu.nets.evaluate): floor 37.79; digits-eps with
# dpm-solver++2m at NFE 20 on 359 samples: 19.64; sliced W2 at NFE 20: moons 0.042 (data vs
# data 0.034), ring 0.059 (0.045). Bounds leave about 50 % margin.
FLOOR = 37.79
DIGITS_FD_BOUND = 30.0
SW_BOUND = {"moons-eps": 0.065, "ring-eps": 0.09}
