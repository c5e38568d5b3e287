"""Derivations as code: sympy expressions for the coefficients the samplers use.

Each submodule belongs to a book chapter; its functions return sympy expressions (no side
effects) that the chapter displays and the tests lambdify and compare with the package.

- :mod:`.pf_ode` (recap): the forward SDE of ``x_t = alpha x_0 + sigma eps``, the
  probability-flow ODE, its Fokker-Planck check, the eps form, VP schedules, DDIM's exactness
  for a point mass.
- :mod:`.deis` (deis): variation of constants in t, the Lagrange basis, the tAB and rho-AB
  coefficients (uniform steps give the classical Adams-Bashforth weights).
- :mod:`.exponential` (dpm_solver): variation of constants in lambda, the phi functions, the
  multistep finite differences and the third-order multistep coefficient.
- :mod:`.sde_dpm_solver` (dpm_solver_pp): the reverse SDE in lambda, SDE-DPM-Solver++'s weights
  and noise, its first-order step = DDPM's posterior step.
- :mod:`.genie` (genie): TTM2 in (x/alpha, sigma/alpha) and the total derivative as one JVP.
- :mod:`.quasi_taylor` (quasi_taylor): ideal derivatives, the series limit (DDIM), the VP radius
  of convergence pi/2, Ito-Taylor moments.
- :mod:`.edm` (edm): the general ODE in (s, sigma) coordinates and the preconditioning.
- :mod:`.linear_multistep` (pndm): Adams-Bashforth weights from the Lagrange interpolant.
- :mod:`.analytic_dpm` (analytic_dpm): the optimal reverse variance and its bounds.
- :mod:`.fastdpm` (fastdpm): the noise-level bijection and the reverse processes.
"""
from . import (analytic_dpm, deis, edm, exponential, fastdpm, genie, linear_multistep, pf_ode, quasi_taylor,
               sde_dpm_solver)
from .pf_ode import (
    ddim_point_mass_residual,
    ddim_step,
    eps_form_difference,
    fokker_planck_difference,
    fokker_planck_rhs,
    forward_sde_coefficients,
    gaussian_marginal_residual,
    half_log_snr,
    moment_odes,
    pf_ode_drift,
    pf_ode_eps_form,
    point_mass_ode_residual,
    point_mass_solution,
    vp_coefficients,
    vp_cosine_log_alpha,
    vp_linear_beta_residuals,
    vp_linear_log_alpha,
)

__all__ = [
    "analytic_dpm", "deis", "edm", "exponential", "fastdpm", "genie", "linear_multistep", "pf_ode", "quasi_taylor",
    "sde_dpm_solver",
    "ddim_point_mass_residual", "ddim_step", "eps_form_difference", "fokker_planck_difference",
    "fokker_planck_rhs", "forward_sde_coefficients", "gaussian_marginal_residual", "half_log_snr",
    "moment_odes", "pf_ode_drift", "pf_ode_eps_form", "point_mass_ode_residual", "point_mass_solution",
    "vp_coefficients", "vp_cosine_log_alpha", "vp_linear_beta_residuals", "vp_linear_log_alpha",
]
