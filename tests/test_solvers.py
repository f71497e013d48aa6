"""odecore's solvers against independent answers: orders, dopri5's error against its
tolerance, the time f receives, bad input and failing solves."""

import re

import pytest
import torch

from odecore import (
    NNODEF,
    ODEF,
    LinearODEF,
    NeuralODE,
    ODESolveError,
    ode_solve,
    odeint,
    step_history,
)
from problems import (
    A_TRUE,
    GRIDS,
    ORDER_SLACK,
    dopri5_bound,
    exact_path,
    growth,
    observed_orders,
    problem,
    rk4_linear_bound,
    time_limit,
)

pytestmark = pytest.mark.numerical  # make test runs these twice, on two kernel paths


# --------------------------------------------------------------------------
# Solver order
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method,order,hs", [
    ("euler", 1, [0.05, 0.025, 0.0125, 0.00625]),
    ("rk4", 4, [0.4, 0.2, 0.1, 0.05]),
])
@pytest.mark.parametrize("grid", list(GRIDS))
def test_solver_order(method, order, hs, grid):
    A, z0, t, _ = problem(grid)
    exact = exact_path(A, z0, t)
    with torch.no_grad():
        errors = [float((odeint(LinearODEF(A), z0, t, method, h) - exact).abs().max())
                  for h in hs]
    for p in observed_orders(errors):
        assert abs(p - order) <= ORDER_SLACK, (errors, observed_orders(errors))


def test_dopri5_error_stays_within_its_tolerance_and_nfe_grows():
    A, z0, t, _ = problem("shared")
    exact = exact_path(A, z0, t)
    stretch = growth(A, float(t[-1] - t[0]))
    y_max = float(exact.abs().max())
    errors, nfes = [], []
    for rtol in [1e-3, 1e-5, 1e-7, 1e-9]:
        f = LinearODEF(A)
        with torch.no_grad():  # the parameters need no graph here
            z = odeint(f, z0, t, "dopri5", rtol=rtol, atol=rtol * 1e-2)
        err = float((z - exact).flatten(1).norm(dim=1).max())
        bound = dopri5_bound(f.nfe, z0.numel(), rtol, rtol * 1e-2, y_max, stretch)
        assert err <= bound, (rtol, err, bound)
        errors.append(err)
        nfes.append(f.nfe)
    assert all(b > a for a, b in zip(nfes, nfes[1:])), nfes
    assert all(b < a for a, b in zip(errors, errors[1:])), errors


def test_fixed_step_count_matches_post():
    """ceil(|t1 - t0| / h_max) equal steps per interval, one evaluation each for Euler."""
    f = LinearODEF(torch.tensor(A_TRUE))
    odeint(f, torch.ones(1, 2), torch.tensor([0.0, 1.0, 1.26]), "euler", 0.1)
    assert f.nfe == 10 + 3
    f.nfe = 0
    ode_solve(torch.ones(1, 2), 0.0, 1.0, f, method="rk4", h_max=0.25)
    assert f.nfe == 4 * 4
    f.nfe = 0  # float32 rounding of an interval must not add a step
    odeint(f, torch.ones(1, 2), torch.tensor([4.2, 4.4]), "euler", h_max=0.2)
    assert f.nfe == 1


# --------------------------------------------------------------------------
# What f receives as t, and the post's single-interval ode_solve
# --------------------------------------------------------------------------
class Recorder(ODEF):
    def __init__(self):
        super().__init__()
        self.shapes = set()

    def forward(self, z, t):
        self.shapes.add(tuple(t.shape))
        return -z * (1 + t)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_f_receives_t_in_one_form_for_every_solver(method):
    z0 = torch.ones(3, 2)
    f = Recorder()
    odeint(f, z0, torch.tensor([0.0, 0.5, 1.0]), method, 0.1)
    assert f.shapes == {()}
    f = Recorder()
    odeint(f, z0, torch.rand(3, 3, 1).cumsum(0) + 0.1, method, 0.1)
    assert f.shapes == {(3, 1)}


def test_ode_solve_single_interval_shared_and_per_sample():
    A = torch.tensor(A_TRUE, dtype=torch.float64)
    z0 = torch.randn(2, 2, dtype=torch.float64)
    t1 = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    z1 = ode_solve(z0, torch.zeros(2, 1, dtype=torch.float64), t1, LinearODEF(A), "rk4", 0.01)
    exact = torch.stack([torch.linalg.matrix_exp(A * float(t)) @ z for t, z in zip(t1, z0)])
    tol = rk4_linear_bound(A, 1.0, 0.01) * float(z0.norm(dim=1).max())  # relative to |z0|
    assert torch.allclose(z1, exact, rtol=0, atol=tol), (z1 - exact, tol)
    back = ode_solve(z1[:1], 1.0, 0.0, LinearODEF(A), "rk4", 0.01)  # backward in time
    tol = rk4_linear_bound(A, 1.0, 0.01) * float(z1[:1].detach().norm())
    assert torch.allclose(back, z0[:1], rtol=0, atol=tol)
class TimeOnly(ODEF):
    """dz/dt = -0.1 exp(-0.1 t): no state, no parameter (torchdiffeq's own test case)."""

    def forward(self, z, t):
        return torch.zeros_like(z) - 0.1 * torch.exp(-0.1 * t)


@pytest.mark.parametrize("t_grad", [False, True])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_dynamics_of_t_alone(t_grad, method):
    """Without a graph to differentiate (t needs no gradient) the vjps are zero, not a crash."""
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=t_grad)
    z0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 2, dtype=torch.float64)
    # RK4 on dynamics of t alone is Simpson's rule: error h^4/2880 max|f^(4)| ~ 1e-17 at
    # h = 0.01; dopri5 at rtol 1e-12 errs by at most dopri5_bound ~ 1e-11. Both far below 1e-9.
    ode = NeuralODE(TimeOnly(), method=method, h_max=0.01, rtol=1e-12, atol=1e-14)
    z = ode(z0, t, return_whole_sequence=True)
    exact = z0.detach() + (torch.exp(-0.1 * t.detach()) - 1).reshape(-1, 1, 1)
    assert torch.allclose(z, exact, atol=1e-9)
    (z * w).sum().backward()
    assert torch.allclose(z0.grad, w.sum(0))
    if t_grad:  # dL/dt_i = f(t_i) <w_i, 1> for i > 0; dL/dt_0 = -f(t_0) sum_{i>0} <w_i, 1>
        f = -0.1 * torch.exp(-0.1 * t.detach())
        ws = w.sum(dim=(1, 2))
        expected = torch.cat([-f[:1] * ws[1:].sum(), f[1:] * ws[1:]])
        assert torch.allclose(t.grad, expected, atol=1e-9)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
def linear():
    return NeuralODE(LinearODEF(torch.tensor(A_TRUE)))


@pytest.mark.parametrize("z0,t,exc,match", [
    (torch.ones(2, 2), torch.zeros(2, 2), ValueError, r"shape \(T,\) or \(T, batch, 1\)"),
    (torch.ones(2, 2), torch.tensor([0.0]), ValueError, "at least 2 time points"),
    (torch.ones(2, 2), torch.tensor([0.0, 1.0, 0.5]), ValueError, "strictly monotonic"),
    (torch.ones(2, 2), torch.tensor([0.0, 1.0, 1.0]), ValueError, "strictly monotonic"),
    (torch.ones(2, 2), torch.zeros(3, 4, 1), ValueError, "has batch 4 .* batch 2"),
    (torch.ones(2, 2, dtype=torch.long), torch.tensor([0.0, 1.0]), TypeError, "floating-point"),
    (torch.ones(2, 2), torch.tensor([0.0, float("nan")]), ValueError, "NaN"),
    (torch.full((2, 2), float("inf")), torch.tensor([0.0, 1.0]), ValueError, "z0 contains"),
])
def test_bad_input_errors(z0, t, exc, match):
    with pytest.raises(exc, match=match):
        linear()(z0, t)


def test_bad_options():
    with pytest.raises(ValueError, match="unknown method"):
        NeuralODE(NNODEF(2, 4), method="rk45")
    with pytest.raises(ValueError, match="h_max"):
        NeuralODE(NNODEF(2, 4), h_max=0)
    with pytest.raises(ValueError, match="max_steps"):
        odeint(NNODEF(2, 4), torch.ones(1, 2), torch.tensor([0.0, 1e3]), h_max=1e-3,
               max_steps=1000)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_path_and_device_mismatch():
    func = LinearODEF(torch.tensor(A_TRUE)).cuda()
    z0 = torch.ones(2, 2, device="cuda", requires_grad=True)
    NeuralODE(func)(z0).sum().backward()
    assert z0.grad.is_cuda
    with pytest.raises(ValueError, match="device"):
        NeuralODE(func)(z0, torch.tensor([0.0, 1.0]))


def test_device_mismatch_is_named():
    t = torch.tensor([0.0, 1.0], device="meta")
    with pytest.raises(ValueError, match="device"):
        linear()(torch.ones(2, 2), t)


class Exploding(ODEF):
    def forward(self, z, t):
        return torch.where(t > 0.5, torch.full_like(z, float("nan")), z)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_nan_in_dynamics_raises_with_the_time(method):
    """f turns NaN after t = 0.5. dopri5 shrinks its step to where it fails and names that
    time; the fixed-step solvers name the observation interval it happened in."""
    with time_limit(30), pytest.raises(ODESolveError, match="NaN or infinite") as err:
        odeint(Exploding(), torch.ones(2, 2), torch.tensor([0.0, 0.4, 1.0]), method, 0.1)
    times = [float(x) for x in re.findall(r"t=(-?\d+(?:\.\d*)?)", str(err.value))]
    expected = [0.5, 0.4, 1.0] if method == "dopri5" else [0.4, 1.0]
    assert times == pytest.approx(expected, abs=1e-5), str(err.value)


def test_nan_in_the_backward_pass_raises():
    class NaNGrad(ODEF):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, z, t):
            return self.w * torch.sqrt(z - 1.0)  # d/dz is infinite at z = 1

    z0 = torch.ones(2, 2, requires_grad=True)
    with time_limit(30), pytest.raises(ODESolveError, match="adjoint"):
        NeuralODE(NaNGrad(), h_max=0.1)(z0).sum().backward()


def test_impossible_tolerance_raises_instead_of_hanging():
    class Stiff(ODEF):
        def forward(self, z, t):
            return -1e6 * z * torch.sin(1e4 * t)

    match = "dopri5 (step size underflow|exceeded)"
    with time_limit(60), pytest.raises(ODESolveError, match=match):
        odeint(Stiff(), torch.ones(1, 2, dtype=torch.float64),
               torch.tensor([0.0, 10.0], dtype=torch.float64), "dopri5",
               rtol=1e-300, atol=1e-300, max_steps=2000)


def test_step_history_records_every_step_and_changes_nothing():
    """A fast relaxation, y' = -1000 (y - sin t): dopri5 at its stability limit rejects steps."""
    f = lambda z, t: -1000 * (z - torch.sin(t))
    z0 = torch.zeros(1, 1, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with step_history() as steps:
        z = odeint(f, z0, t, method="dopri5", rtol=1e-6, atol=1e-9)
    assert torch.equal(z, odeint(f, z0, t, method="dopri5", rtol=1e-6, atol=1e-9))
    accepted = [s for s in steps if s.accepted]
    assert any(not s.accepted for s in steps)
    assert all(s.ratio <= 1 for s in accepted) and all(s.ratio > 1 for s in steps
                                                        if not s.accepted)
    # the accepted steps tile [0, 1] in order, in real time, across the grid's intervals
    starts = torch.tensor([s.t for s in accepted], dtype=torch.float64)
    ends = starts + torch.tensor([s.h for s in accepted], dtype=torch.float64)
    assert float(starts[0]) == 0.0 and float(ends[-1]) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(starts[1:], ends[:-1], atol=1e-12)
    with step_history() as none:
        odeint(f, z0, t, method="rk4", h_max=1e-3)
    assert none == []  # fixed steps are not controlled, so nothing is recorded
