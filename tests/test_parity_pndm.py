"""PNDM against the oracles: diffusers' PNDMScheduler (PLMS and F-PNDM) and k-diffusion's
sample_lms, driven with the exact gmm64 mixture on the same timesteps.

diffusers calls the model with integer timestep labels n; our DiscreteVP.ddpm_linear puts label n
at t = (n + 1)/N, so alpha(t)^2 is diffusers' alphas_cumprod[n] (up to its float32 storage,
checked below). Its ``set_timesteps`` with ``timestep_spacing="leading"`` is our
``timesteps.make(schedule, "leading", S)``; the final step goes to ``final_alpha_cumprod``: 1
(t = 0) with ``set_alpha_to_one=True``, alphas_cumprod[0] (t = t_min) otherwise.
"""
from __future__ import annotations

import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import metrics, problems, timesteps
from fastdiff_edu.schedules import DiscreteVP
from tests._helpers import point_mass_model, single_thread  # noqa: F401
from tests.oracles import diffusers as load_diffusers
from tests.oracles import k_diffusion_sampling

F64 = torch.float64
SCHED = DiscreteVP.ddpm_linear()
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction"}


@pytest.fixture(scope="module")
def mixture():
    return problems.gmm64()


@pytest.fixture(scope="module")
def x_T():
    return SCHED.prior_sample((8, 64), generator=torch.Generator().manual_seed(0), dtype=F64)


def _scheduler(kind="eps", float64=True, **config):
    """diffusers' PNDMScheduler for the DDPM linear schedule; with ``float64`` its alphas_cumprod
    (stored in float32) are replaced by ours, so that both run the same arithmetic."""
    diffusers = load_diffusers()
    scheduler = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear", prediction_type=PREDICTION_TYPE[kind], **config)
    if float64:
        scheduler.alphas_cumprod = SCHED.alphas_cumprod.clone()
        scheduler.final_alpha_cumprod = (torch.tensor(1.0, dtype=F64) if config.get("set_alpha_to_one")
                                         else SCHED.alphas_cumprod[0].clone())
    return scheduler


def _run_diffusers(scheduler, steps, view, x_T, schedule=SCHED):
    """The pipeline loop: the exact mixture as the network, called with diffusers' integer labels."""
    scheduler.set_timesteps(steps)
    x, labels = x_T.clone(), []
    for label in scheduler.timesteps:
        labels.append(int(label))
        t = schedule.t_of_label(torch.tensor(float(label), dtype=F64))
        x = scheduler.step(view(x, schedule.alpha(t), schedule.sigma(t)), label, x).prev_sample
    return x, labels


OURS = {True: "plms", False: "f-pndm"}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_alphas_cumprod_match_diffusers():
    scheduler = _scheduler(float64=False)
    deviation = rel_err(scheduler.alphas_cumprod.double() / SCHED.alphas_cumprod, torch.ones(1000, dtype=F64))
    assert deviation < 1e-6, deviation          # float32 storage: measured 3.6e-7
    label = torch.arange(1000, dtype=F64)
    assert torch.allclose(SCHED.alpha(SCHED.t_of_label(label)) ** 2, SCHED.alphas_cumprod, rtol=1e-13)


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "f-pndm"])
@pytest.mark.parametrize("steps", [10, 20, 25])
def test_parity_with_set_alpha_to_one(mixture, x_T, skip_prk_steps, steps):
    """set_alpha_to_one=True, steps_offset=0: the "leading" grid down to t = 0. Measured ~1e-14."""
    scheduler = _scheduler(skip_prk_steps=skip_prk_steps, set_alpha_to_one=True)
    expected, labels = _run_diffusers(scheduler, steps, mixture.eps, x_T)
    model = mixture.prediction(SCHED)
    grid = timesteps.make(SCHED, "leading", steps)
    ours = fd.sample(model, x_T, OURS[skip_prk_steps], timesteps=grid)
    assert rel_err(ours, expected) < 1e-10
    assert model.nfe == len(labels) == (steps + 1 if skip_prk_steps else steps + 9)


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "f-pndm"])
def test_parity_with_the_default_config_wastes_one_evaluation(mixture, x_T, skip_prk_steps):
    """The default set_alpha_to_one=False, steps_offset=0: the last label is 0 and the final step goes
    from alphas_cumprod[0] to alphas_cumprod[0], a step of length zero that still costs an NFE.
    The result is ours on the grid without that step, with one evaluation less."""
    steps = 20
    scheduler = _scheduler(skip_prk_steps=skip_prk_steps, set_alpha_to_one=False)
    expected, labels = _run_diffusers(scheduler, steps, mixture.eps, x_T)
    assert labels[-1] == 0
    model = mixture.prediction(SCHED)
    grid = timesteps.make(SCHED, "leading", steps)[:-1]         # ends at label 0 = t_min
    ours = fd.sample(model, x_T, OURS[skip_prk_steps], timesteps=grid)
    assert rel_err(ours, expected) < 1e-10
    assert model.nfe == len(labels) - 1


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "f-pndm"])
def test_parity_with_the_stable_diffusion_config(mixture, x_T, skip_prk_steps):
    """steps_offset=1, set_alpha_to_one=False (the Stable Diffusion configs): labels 1 + k N/S, then
    a final step to alphas_cumprod[0], i.e. t_min: an explicit grid."""
    steps = 10
    scheduler = _scheduler(skip_prk_steps=skip_prk_steps, set_alpha_to_one=False, steps_offset=1)
    expected, labels = _run_diffusers(scheduler, steps, mixture.eps, x_T)
    labels_ours = torch.arange(steps - 1, -1, -1, dtype=F64) * (1000 // steps) + 1
    grid = torch.cat([SCHED.t_of_label(labels_ours), torch.tensor([SCHED.t_min], dtype=F64)])
    model = mixture.prediction(SCHED)
    ours = fd.sample(model, x_T, OURS[skip_prk_steps], timesteps=grid)
    assert rel_err(ours, expected) < 1e-10
    assert model.nfe == len(labels)


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "f-pndm"])
def test_parity_with_diffusers_float32_schedule(mixture, skip_prk_steps):
    """The scheduler exactly as shipped (float32 alphas_cumprod), against our DiscreteVP built from
    those same numbers: agreement to 1e-6 relative (measured 1.6e-7 to 3.7e-7)."""
    scheduler = _scheduler(float64=False, skip_prk_steps=skip_prk_steps, set_alpha_to_one=True)
    schedule = DiscreteVP(scheduler.alphas_cumprod.double())
    x_T = schedule.prior_sample((8, 64), generator=torch.Generator().manual_seed(0), dtype=F64)
    expected, _ = _run_diffusers(scheduler, 20, mixture.eps, x_T, schedule)
    ours = fd.sample(mixture.prediction(schedule), x_T, OURS[skip_prk_steps],
                     timesteps=timesteps.make(schedule, "leading", 20))
    assert rel_err(ours, expected) < 1e-6


def test_prk_midpoint_of_diffusers_for_odd_spacing(mixture, x_T):
    """With N // S odd (S = 30: 33 labels per step) diffusers' ``step_prk`` transfers x to label
    t - 16 (``diff_to_prev``) but its ``prk_timesteps`` evaluate the model there at t - 33 + 16 =
    t - 17: the stage is evaluated one label away from where it was moved (the true midpoint is
    t - 16.5, which ours uses for both). The two differ slightly (measured 3.0e-6 relative);
    PLMS has no midpoint and agrees."""
    steps = 30
    model = mixture.prediction(SCHED)
    grid = timesteps.make(SCHED, "leading", steps)
    prk_labels = _scheduler(skip_prk_steps=False, set_alpha_to_one=True)
    prk_labels.set_timesteps(steps)
    assert [int(v) for v in prk_labels.prk_timesteps[:4]] == [957, 940, 940, 924]   # moved to 957 - 16 = 941
    expected, _ = _run_diffusers(_scheduler(skip_prk_steps=False, set_alpha_to_one=True), steps, mixture.eps, x_T)
    deviation = rel_err(fd.sample(model, x_T, "f-pndm", timesteps=grid), expected)
    assert 1e-7 < deviation < 1e-4, deviation
    expected, _ = _run_diffusers(_scheduler(skip_prk_steps=True, set_alpha_to_one=True), steps, mixture.eps, x_T)
    assert rel_err(fd.sample(model, x_T, "plms", timesteps=grid), expected) < 1e-10


# -- v-prediction: diffusers combines the raw v outputs ---------------------------------------------------
def _plms_combining_raw_v(mixture, x_T, grid):
    """What diffusers' PLMS computes for a v-model (our reading of ``step_plms`` and
    ``_get_prev_sample``): the v outputs are averaged / Adams-Bashforth-combined *first*, and the
    combination is turned into a noise value with alpha, sigma and x of the step's start (for the
    warm-up: of x_T). Correct is to convert each v at its own (x, t) and combine the noise values."""
    from fastdiff_edu.solvers.ddim import ddim_coefficients
    from fastdiff_edu.solvers.pndm import AB_UNIFORM
    c_x, c_eps, _ = ddim_coefficients(SCHED, grid)
    alpha, sigma = SCHED.alpha(grid), SCHED.sigma(grid)

    def v_at(x, i):
        return mixture.v(x, alpha[i], sigma[i])

    def step(x, i, v_combined):
        return c_x[i] * x + c_eps[i] * (alpha[i] * v_combined + sigma[i] * x)

    v0 = v_at(x_T, 0)
    v_pred = v_at(step(x_T, 0, v0), 1)
    x, history = step(x_T, 0, 0.5 * (v0 + v_pred)), [v0]
    for i in range(1, grid.numel() - 1):
        history = (history + [v_at(x, i)])[-4:]
        weights = AB_UNIFORM[len(history)]
        x = step(x, i, sum(w * v for w, v in zip(weights, history[::-1])))
    return x


@pytest.mark.parametrize("steps", [10, 20])
def test_v_prediction_in_diffusers_combines_raw_outputs(mixture, x_T, steps):
    """diffusers' PNDMScheduler(prediction_type="v_prediction") is not the eps method: it matches
    the raw-v combination above to 1e-10 (the library's value) and differs from its own eps run by
    5-13 % (measured). Ours gives the same samples for eps, x0 and v models (the corrected value)."""
    grid = timesteps.make(SCHED, "leading", steps)
    library_v, _ = _run_diffusers(_scheduler("v", skip_prk_steps=True, set_alpha_to_one=True), steps, mixture.v, x_T)
    library_eps, _ = _run_diffusers(_scheduler("eps", skip_prk_steps=True, set_alpha_to_one=True), steps,
                                    mixture.eps, x_T)
    assert rel_err(library_v, _plms_combining_raw_v(mixture, x_T, grid)) < 1e-10
    assert rel_err(library_v, library_eps) > 1e-2
    ours = {kind: fd.sample(mixture.prediction(SCHED, kind=kind), x_T, "plms", timesteps=grid)
            for kind in ["eps", "x0", "v"]}
    for kind in ["x0", "v"]:
        assert rel_err(ours[kind], ours["eps"]) < 1e-12
    assert rel_err(ours["eps"], library_eps) < 1e-10
    # the library's v error is larger than the discretisation error it sits on top of
    assert metrics.rmse(library_v, library_eps) > 1e-3


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "f-pndm"])
def test_v_prediction_on_a_point_mass(skip_prk_steps):
    """Data = one point: eps is constant along the path, so PNDM with the exact model lands on the
    point (diffusers with an eps model too); diffusers with the exact v model misses it."""
    point = torch.linspace(-1, 1, 6, dtype=F64)
    x_T = SCHED.prior_sample((4, 6), generator=torch.Generator().manual_seed(3), dtype=F64)

    def eps_view(x, alpha, sigma):
        return (x - alpha * point) / sigma

    def v_view(x, alpha, sigma):
        return alpha * eps_view(x, alpha, sigma) - sigma * point

    steps = 10
    grid = timesteps.make(SCHED, "leading", steps)
    ours = fd.sample(point_mass_model(SCHED, point), x_T, OURS[skip_prk_steps], timesteps=grid)
    assert float((ours - point).abs().max()) < 1e-10
    library_eps, _ = _run_diffusers(_scheduler("eps", skip_prk_steps=skip_prk_steps, set_alpha_to_one=True),
                                    steps, eps_view, x_T)
    library_v, _ = _run_diffusers(_scheduler("v", skip_prk_steps=skip_prk_steps, set_alpha_to_one=True),
                                  steps, v_view, x_T)
    assert float((library_eps - point).abs().max()) < 1e-10
    assert float((library_v - point).abs().max()) > 1e-3


# -- k-diffusion's LMS is iPNDM with the sigma_bar weights ----------------------------------------------------
@pytest.mark.parametrize("steps, end_at_zero", [(10, False), (20, True)])
def test_k_diffusion_lms_is_ipndm_with_sigma_bar_weights(mixture, x_T, steps, end_at_zero):
    """k-diffusion's sample_lms (order 4) integrates the Lagrange interpolant of d = eps over sigma
    (= our sigma_bar) with scipy's quad and starts with Euler: ipndm(nonuniform=True), run in
    x/alpha. Measured agreement 6e-16."""
    ks = k_diffusion_sampling()
    grid = timesteps.make(SCHED, "logsnr", steps)
    if end_at_zero:
        grid = torch.cat([grid[:-1], torch.zeros(1, dtype=F64)])
    sigmas = SCHED.sigma_bar(grid)

    def denoiser(x_bar, sigma_bar):
        t = SCHED.t_of_sigma_bar(sigma_bar[:1].double())
        alpha = SCHED.alpha(t)
        return mixture.x0(alpha * x_bar, alpha, SCHED.sigma(t))

    expected = ks.sample_lms(denoiser, x_T / SCHED.alpha(grid[0]), sigmas, disable=True) * SCHED.alpha(grid[-1])
    ours = fd.sample(mixture.prediction(SCHED), x_T, "ipndm", timesteps=grid, nonuniform=True)
    assert rel_err(ours, expected) < 1e-10
