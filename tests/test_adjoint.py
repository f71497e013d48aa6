"""odecore's adjoint against independent answers: exact gradients of the linear ODE,
autograd through the solver, gradcheck, the seminorm, and constant memory."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import measure
from odecore import (
    ADJOINT_NORMS,
    NNODEF,
    ConvODEF,
    LinearODEF,
    NeuralODE,
    ODEAdjoint,
    SolverOptions,
    mixed_norm,
    odeint,
    seminorm,
)
from problems import (
    A_TRUE,
    GRIDS,
    ORDER_SLACK,
    TanhMLP,
    adjoint_grads,
    exact_grads,
    exact_path,
    observed_orders,
    problem,
    rel_err,
    rk4_linear_bound,
    time_limit,
)

pytestmark = pytest.mark.numerical  # make test runs these twice, on two kernel paths


# --------------------------------------------------------------------------
# Adjoint gradients against the exact gradients of the linear ODE
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method,order,hs", [
    ("euler", 1, [0.025, 0.0125, 0.00625]),
    ("rk4", 4, [0.1, 0.05, 0.025]),  # h = 0.2 is two steps an interval: not yet asymptotic
])
@pytest.mark.parametrize("grid", list(GRIDS))
def test_adjoint_converges_at_solver_order(method, order, hs, grid):
    A, z0, t, w = problem(grid)
    exact = exact_grads(A, z0, t, w)
    errs = np.array([[rel_err(g, e) for g, e in zip(adjoint_grads(A, z0, t, w, method=method,
                                                                   h_max=h), exact)]
                     for h in hs])
    for name, col in zip(["z0", "A", "t"], errs.T):
        for p in observed_orders(list(col)):
            assert abs(p - order) <= ORDER_SLACK, (name, col, observed_orders(list(col)))


# The gradients' relative error for RK4 at h = 0.0125 and dopri5 at rtol 1e-10. RK4's error
# on this problem is at most rk4_linear_bound (about 5e-9 of |z| here) and dopri5's
# dopri5_bound (about 1e-8 for the 30-odd steps it takes); the gradients multiply states
# by adjoints (a z^T for A, f.a for t), which at most doubles the relative error. 1e-6
# is that with a factor of 50 to spare, and far below the 1e-4 that h = 0.05 errs by.
EXACT_GRADIENT_TOL = 1e-6


@pytest.mark.parametrize("grid", list(GRIDS))
def test_adjoint_rk4_fine_and_dopri5_match_exact(grid):
    A, z0, t, w = problem(grid)
    assert rk4_linear_bound(A, 2.4, 0.0125) < EXACT_GRADIENT_TOL / 50  # the argument above
    exact = exact_grads(A, z0, t, w)
    for opts in [dict(method="rk4", h_max=0.0125),
                 dict(method="dopri5", rtol=1e-10, atol=1e-12)]:
        for name, g, e in zip(["z0", "A", "t"], adjoint_grads(A, z0, t, w, **opts), exact):
            assert g.shape == e.shape
            assert rel_err(g, e) < EXACT_GRADIENT_TOL, (opts, name, rel_err(g, e))


def test_each_time_gradient_is_right():
    """The post's time-gradient slips, each checked on its own time point.

    Sign at the last point, the accumulator returned for interior points, a
    stale f at t0, and a division by the batch size: any of them moves one of
    these entries by far more than the tolerance.
    """
    A, z0, t, w = problem("shared")
    g_exact = exact_grads(A, z0, t, w)[2]
    g = adjoint_grads(A, z0, t, w, method="rk4", h_max=0.0125)[2]
    for i in range(len(t)):  # RK4 at h = 0.0125: see EXACT_GRADIENT_TOL
        assert abs(float(g[i] - g_exact[i])) < EXACT_GRADIENT_TOL * float(g_exact.abs().max()), (
            i, g, g_exact)
    # the last point: dL/dt_N = f(z_N)·dL/dz_N exactly, with its sign
    zN = exact_path(A, z0, t)[-1]
    assert torch.allclose(g[-1], ((zN @ A.T) * w[-1]).sum(), rtol=1e-6)


# --------------------------------------------------------------------------
# Adjoint against autograd through the same solver, on nonlinear dynamics
# --------------------------------------------------------------------------
def grads_through(func, z0, t, w, adjoint, **opts):
    func.zero_grad()
    z0, t = z0.clone().requires_grad_(), t.clone().requires_grad_()
    ode = NeuralODE(func, adjoint=adjoint, **opts)
    (ode(z0, t, return_whole_sequence=True) * w).sum().backward()
    return [z0.grad, t.grad] + [p.grad.clone() for p in func.parameters()]


@pytest.mark.parametrize("field", ["tanh", "elu", "elu-time-invariant"])
@pytest.mark.parametrize("grid", ["shared", "per-sample-backward"])
def test_adjoint_matches_autograd_through_solver(field, grid):
    """The adjoint (solve, then differentiate) against autograd through RK4's steps
    (differentiate, then solve), at h = 0.04 and 0.02.

    On a smooth field both are within O(h^4) of the exact gradient, so their gap must
    fall 16 times when h halves; at least 8 allows for the next term of the expansion.
    The post's ELU field has a kink in its derivative, which the adjoint's dynamics
    contain: a step across a kink errs by O(h^2) with a constant that depends on where
    in the step the kink falls, so the gap need not fall monotonically at all. There
    the gap must stay below 1e-5: a term of the adjoint missing or of the wrong sign
    makes it of order one, and kinks alone give at most O(h^2) times how much of the
    path crosses them (below 1.2e-6 at every h from 0.08 to 0.005 here).
    """
    torch.manual_seed(2)
    func = {"tanh": lambda: TanhMLP(),
            "elu": lambda: NNODEF(2, 16, time_invariant=False),
            "elu-time-invariant": lambda: NNODEF(2, 16, time_invariant=True)}[field]().double()
    _, z0, t, w = problem(grid)
    gaps = []
    for h in (0.04, 0.02):
        ga = grads_through(func, z0, t, w, True, method="rk4", h_max=h)
        gb = grads_through(func, z0, t, w, False, method="rk4", h_max=h)
        assert all(a.shape == b.shape for a, b in zip(ga, gb))
        gaps.append(max(rel_err(a, b) for a, b in zip(ga, gb)))
    if field == "tanh":
        assert gaps[1] <= gaps[0] / 8 and gaps[1] > 1e-12, gaps  # above round-off: measured
    else:
        assert max(gaps) < 1e-5, gaps


def test_gradcheck_adjoint_and_direct():
    torch.manual_seed(3)
    func = NNODEF(2, 8, time_invariant=False).double()
    params = list(func.parameters())
    z0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    # Times off the step grid: the number of fixed steps, ceil(dt / h_max), must
    # not jump under gradcheck's finite-difference perturbation.
    t = torch.tensor([0.0, 0.47, 1.0], dtype=torch.float64, requires_grad=True)
    opts = SolverOptions(method="rk4", h_max=0.03, rtol=1e-5, atol=1e-7, max_steps=10_000)
    # The adjoint solves a different (continuous) problem than the discrete
    # forward, so it matches finite differences up to O(h^4), well inside atol.
    assert torch.autograd.gradcheck(
        lambda z, tt, *p: ODEAdjoint.apply(z, tt, func, opts, *p), (z0, t, *params[:2]),
        atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(
        lambda z, tt: odeint(func, z, tt, "rk4", 0.1), (z0, t))


def test_parameter_gradient_shapes_and_batch_sum():
    torch.manual_seed(4)
    func = NNODEF(2, 16, time_invariant=False).double()
    z0 = torch.randn(5, 2, dtype=torch.float64)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    ode = NeuralODE(func, method="rk4", h_max=0.1)
    ode(z0, t).pow(2).sum().backward()
    total = [p.grad.clone() for p in func.parameters()]
    for p, g in zip(func.parameters(), total):
        assert g.shape == p.shape
    summed = [torch.zeros_like(g) for g in total]
    for b in range(5):
        func.zero_grad()
        ode(z0[b:b + 1], t).pow(2).sum().backward()
        summed = [s + p.grad for s, p in zip(summed, func.parameters())]
    for a, b in zip(total, summed):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_forward_with_grad_vjps():
    torch.manual_seed(5)
    func = NNODEF(3, 8).double()
    z, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    a = torch.randn(4, 3, dtype=torch.float64)
    f, adz, adt, adp = func.forward_with_grad(z, t, a)
    J = torch.autograd.functional.jacobian(lambda zz: func(zz, t), z)  # (4,3,4,3)
    assert torch.allclose(adz, torch.einsum("bi,bicj->cj", a, J))
    eps = 1e-6
    fd = ((func(z, t + eps) - func(z, t - eps)) / (2 * eps) * a).sum()
    assert torch.allclose(adt, fd, rtol=1e-6)
    assert len(adp) == len(list(func.parameters()))
    assert func.flatten_parameters().numel() == sum(p.numel() for p in func.parameters())


def test_nfe_reported_for_forward_and_backward():
    func = LinearODEF(torch.tensor(A_TRUE))
    ode = NeuralODE(func, method="euler", h_max=0.1)
    z0 = torch.ones(2, 2, requires_grad=True)
    ode(z0).sum().backward()
    assert ode.nfe_forward == 10
    assert ode.nfe_backward == 10  # t needs no gradient: no extra evaluations


# --------------------------------------------------------------------------
# Seminorm error control in the adjoint's backward solve
# --------------------------------------------------------------------------
NORM_TOLS = [(1e-4, 1e-6), (1e-6, 1e-8), (1e-8, 1e-10)]  # (rtol, atol)


def norm_case(case):
    """(run(**opts) -> (grads z0, theta, t; backward NFE), reference grads, the
    reference's own relative error) for a case."""
    if case.startswith("linear-"):  # exact gradients by the matrix exponential
        A, z0, t, w = problem(case[len("linear-"):])

        def run(**opts):
            func = LinearODEF(A)
            ode = NeuralODE(func, method="dopri5", **opts)
            zz, tt = z0.clone().requires_grad_(), t.clone().requires_grad_()
            (ode(zz, tt, return_whole_sequence=True) * w).sum().backward()
            return (zz.grad, func.lin.weight.grad, tt.grad), ode.nfe_backward
        return run, exact_grads(A, z0, t, w), 1e-15
    torch.manual_seed(2)  # "mlp-<grid>": nonlinear, smooth, time-dependent
    func = TanhMLP().double()
    _, z0, t, w = problem(case[len("mlp-"):])

    def pack(g):
        return g[0], torch.cat([p.flatten() for p in g[2:]]), g[1]

    def run(**opts):
        g = grads_through(func, z0, t, w, True, method="dopri5", **opts)
        return pack(g), func.nfe_backward
    # RK4 at h = 1/400; h = 1/200 errs 16 times as much, so their gap bounds its error
    ref, coarse = (pack(grads_through(func, z0, t, w, True, method="rk4", h_max=h))
                   for h in (1 / 400, 1 / 200))
    return run, ref, max(rel_err(a, b) for a, b in zip(coarse, ref)) / 15


# What a user relies on: the gradient's relative error is a stated multiple of rtol. dopri5
# keeps each step's local error below rtol relative to the state (atol matters only near
# zero); the global error is at most the sum of the local errors of the solve's steps, each
# carried to the end by the flow (dopri5_bound): steps x rtol x stretch. The seminorm leaves
# a_theta and a_t out of the step control; they are integrals along the steps that z and a
# set, of integrands as smooth as those, so their error is of the same order. The stated
# multiple: 10 x steps x rtol, ten for the flow's stretching (none for the linear flows,
# growth() = 1; a small factor for the MLP's), for sqrt(n) in the 2-norm, and for that
# argument. A step count of nfe / 6 (six new evaluations a step) is an upper bound.
SEMINORM_ERROR_MULTIPLE = 10
# Over four decades of rtol a 5(4) pair with error-per-step control cuts the global error
# about 10^4 times (tolerance proportionality); at least 100 allows the loosest tolerance's
# error to sit up to a hundred times below its bound.
SEMINORM_ERROR_DROP = 100


@pytest.mark.parametrize("case", ["linear-shared", "linear-shared-backward",
                                  "linear-per-sample", "linear-per-sample-backward",
                                  "mlp-shared", "mlp-per-sample-backward"])
def test_seminorm_gradients_converge_and_cost_no_more(case):
    """z0, theta and every t against an independent answer, for both norms.

    At each tolerance the seminorm's backward NFE is at most the mixed norm's (its error
    norm is a maximum over fewer parts, so it accepts every step the mixed norm accepts),
    every gradient's error is at most SEMINORM_ERROR_MULTIPLE x steps x rtol under either
    norm,
    and over four decades of tolerance the seminorm's errors fall at least
    SEMINORM_ERROR_DROP times. The reference's own error is below a hundredth of every
    error compared.
    """
    run, ref, ref_err = norm_case(case)
    errs = {}
    for norm in ["mixed", "seminorm"]:
        errs[norm] = []
        for rtol, atol in NORM_TOLS:
            grads, nfe = run(rtol=rtol, atol=atol, adjoint_norm=norm)
            errs[norm].append(([rel_err(g, r) for g, r in zip(grads, ref)], nfe))
    assert ref_err <= min(min(e) for rows in errs.values() for e, _ in rows) / 100, ref_err
    for norm, rows in errs.items():
        for (e, nfe), (rtol, _) in zip(rows, NORM_TOLS):
            bound = SEMINORM_ERROR_MULTIPLE * nfe / 6 * rtol
            for name, err in zip(["z0", "theta", "t"], e):
                assert err <= bound, (norm, rtol, name, err, bound)
    for (_, nfe_s), (_, nfe_m), tol in zip(errs["seminorm"], errs["mixed"], NORM_TOLS):
        assert nfe_s <= nfe_m, (tol, nfe_s, nfe_m)
    for k, name in enumerate(["z0", "theta", "t"]):
        first, last = errs["seminorm"][0][0][k], errs["seminorm"][-1][0][k]
        assert last <= first / SEMINORM_ERROR_DROP, (name, first, last)




def test_seminorm_cuts_convodef_backward_nfe():
    """Notebook 02's ConvODEF (16 channels, 4x4, batch 2), rtol 1e-4 / atol 1e-6.

    The mixed norm holds the parameter adjoints (2 x 16 x 17 x 9 weights, all starting
    at 0, so only atol scales their error) to atol, and they set the step; the seminorm
    does not measure them. Kidger, Chen & Lyons report a median of 40% fewer backward
    evaluations on their benchmarks: the seminorm must save at least that here (this
    float64 case saves about two thirds), the forward pass unchanged.
    """
    torch.manual_seed(0)
    func = ConvODEF(16).double().eval()
    z0 = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    w = torch.randn_like(z0)
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # kernels this small only lose by a second thread
    try:
        for norm in ["mixed", "seminorm"]:
            func.zero_grad()
            ode = NeuralODE(func, method="dopri5", rtol=1e-4, atol=1e-6, adjoint_norm=norm)
            zz = z0.clone().requires_grad_()
            with time_limit(60):  # about 3 s on one idle core
                (ode(zz) * w).sum().backward()
            out[norm] = (ode.nfe_forward, ode.nfe_backward, zz.grad,
                         torch.cat([p.grad.flatten() for p in func.parameters()]))
    finally:
        torch.set_num_threads(threads)
    (fm, bm, gzm, gpm), (fs, bs, gzs, gps) = out["mixed"], out["seminorm"]
    assert fs == fm
    assert bs <= 0.6 * bm, (bs, bm)
    # The same gradients up to the tolerance's error: each is within the seminorm test's
    # stated multiple (10 x steps x rtol) of the exact one, so they are within twice that of
    # each other. ReLU's kinks void the order argument, but not the per-step error control.
    bound = 2 * SEMINORM_ERROR_MULTIPLE * max(bs, bm) / 6 * 1e-4
    assert rel_err(gzs, gzm) < bound and rel_err(gps, gpm) < bound, bound


def test_the_seminorm_measures_z_and_a_alone():
    """The step controller's norms are functions of (err, y0, y1): a large error in a third
    part (a parameter adjoint) rejects a step under the mixed norm only."""
    y = [torch.ones(3), torch.ones(3), torch.ones(5)]
    err = [torch.full((3,), 1e-6), torch.full((3,), 1e-6), torch.full((5,), 1.0)]
    assert seminorm(err, y, y, 1e-3, 1e-6) < 1 < mixed_norm(err, y, y, 1e-3, 1e-6)
    assert seminorm(err, y, y, 1e-3, 1e-6) == mixed_norm(err[:2], y[:2], y[:2], 1e-3, 1e-6)
    assert ADJOINT_NORMS == {"seminorm": seminorm, "mixed": mixed_norm}


def test_adjoint_norm_option():
    with pytest.raises(ValueError, match="adjoint_norm"):
        NeuralODE(NNODEF(2, 4), adjoint_norm="l2")
    assert NeuralODE(NNODEF(2, 4)).opts.adjoint_norm == "seminorm"


# --------------------------------------------------------------------------
# Memory: the adjoint keeps no per-step graph
# --------------------------------------------------------------------------
def saved_bytes(adjoint, n_steps):
    func = NNODEF(64, 64, time_invariant=True)
    z0 = torch.randn(32, 64, requires_grad=True)
    ode = NeuralODE(func, method="euler", h_max=1.0 / n_steps, adjoint=adjoint)
    total = [0]

    def pack(x):
        total[0] += x.numel() * x.element_size()
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = ode(z0)
    out.sum().backward()
    return total[0]


def test_adjoint_saves_the_same_for_10_and_1000_steps():
    assert saved_bytes(True, 1000) == saved_bytes(True, 10)
    # the measure can fail: backprop through the solver saves per step
    assert saved_bytes(False, 1000) > 50 * saved_bytes(False, 10) / 2


def peak_mb(configs):
    """Peak memory (MB) of training steps, one fresh process per configuration, side by side."""
    with ThreadPoolExecutor(len(configs)) as pool:
        return list(pool.map(lambda c: measure.in_fresh_process(
            "problems:training_step_peak_mb", *c, timeout=300), configs))


def test_peak_memory_of_a_training_step_is_flat_with_adjoint():
    adj10, adj1000, direct10, direct200 = peak_mb(
        [(True, 10), (True, 1000), (False, 10), (False, 200)])
    # The adjoint stores no step: 990 more steps may add at most a few states of 0.5 MB
    # (what one backward step holds at once), where storing them would add 495 MB.
    assert adj1000 < adj10 + 5, (adj10, adj1000)
    # each step of the direct path keeps tanh's output, 0.5 MB: 190 more steps store at
    # least 95 MB (half of that, so that allocator rounding cannot hide it)
    assert direct200 > direct10 + 95 / 2, (direct10, direct200)
