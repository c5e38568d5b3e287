"""The sympy derivations of fastdiff_edu.derivations.deis against the numbers the DEIS samplers use."""
from __future__ import annotations

import pytest
import sympy as sp
import torch

import fastdiff_edu as fd
from fastdiff_edu.derivations import deis as d
from fastdiff_edu.solvers.ddim import ddim_coefficients
from fastdiff_edu.solvers.deis import rhoab_weights, tab_weights

F64 = torch.float64


def test_variation_of_constants_and_kernels():
    assert d.transition_residual() == (0, 0)
    assert d.variation_of_constants_residual() == (0, 0)
    assert d.kernel_in_lambda_difference() == 0
    assert d.kernel_in_rho_difference() == 0


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_uniform_steps_give_classical_adams_bashforth(order):
    assert d.uniform_ab_weights(order) == list(d.CLASSICAL_AB[order])


def test_lagrange_basis_is_cardinal():
    _, nodes = d.grid_symbols(3)
    for j in range(4):
        values = [sp.simplify(d.lagrange_basis(nodes, j, nodes[m])) for m in range(4)]
        assert values == [1 if m == j else 0 for m in range(4)]


def _random_grid(sched, steps=12, seed=3):
    """A strictly decreasing, deliberately non-uniform grid inside the schedule's time range."""
    gen = torch.Generator().manual_seed(seed)
    t_min, t_max = float(sched.t_min), float(sched.t_max)
    inner = torch.rand(steps - 1, generator=gen, dtype=F64) * (t_max - t_min) + t_min
    return torch.cat([torch.tensor([t_max], dtype=F64), inner.sort(descending=True).values,
                      torch.tensor([t_min], dtype=F64)])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_rhoab_closed_forms_match_the_sampler(order):
    sched = fd.schedules.DiscreteVP.ddpm_linear()
    grid = _random_grid(sched)
    rho, alpha = sched.sigma_bar(grid), sched.alpha(grid)
    c_x, weights = rhoab_weights(sched, grid, order)
    assert torch.allclose(c_x, alpha[1:] / alpha[:-1], rtol=1e-14, atol=0)
    for i in range(grid.numel() - 1):
        k = min(order, i)                       # the first steps use the history they have
        end, nodes = d.rho_symbols(k)
        fn = sp.lambdify([d.alpha_next, end, *nodes], d.rhoab_coefficients(k))
        expected = torch.tensor(fn(float(alpha[i + 1]), float(rho[i + 1]), *[float(rho[i - m]) for m in range(k + 1)]),
                                dtype=F64)
        assert torch.allclose(weights[i, : k + 1], expected, rtol=1e-12, atol=0), i
        assert torch.all(weights[i, k + 1:] == 0)


@pytest.mark.parametrize("sched", [fd.schedules.DiscreteVP.ddpm_linear(), fd.schedules.VPLinear()],
                         ids=["DiscreteVP", "VPLinear"])
def test_order_zero_is_ddim(sched):
    assert d.order0_minus_ddim() == (0, 0)
    grid = _random_grid(sched)
    c_x, c_eps, _ = ddim_coefficients(sched, grid)
    for weights_of in (lambda: tab_weights(sched, grid, 0), lambda: rhoab_weights(sched, grid, 0)):
        cx, w = weights_of()
        assert torch.allclose(cx, c_x, rtol=1e-12, atol=0)
        assert torch.allclose(w[:, 0], c_eps, rtol=1e-9, atol=0)
