"""cnf against independent answers: closed forms, Jacobians, exact flows, autograd."""

import math

import pytest
import torch
from torch import nn

import cnf
from cnf import (
    CNF,
    CNFODEF,
    DATASETS,
    ENERGIES,
    GaussianBaseline,
    MLPField,
    PlanarField,
    PlanarFlow,
    RegularisedCNF,
    energy_normalizer,
    grid_points,
    hutchinson_probes,
    kl_loss,
    log_probs,
    make_data,
    nll,
    nll_gap,
    standard_normal_logprob,
    support_fraction,
    trace_exact,
    trace_hutchinson,
)

F64 = torch.float64


# tiny models: one thread; thresholds on floating-point results (make test runs them twice)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerical]
TIGHT = dict(rtol=1e-10, atol=1e-10)
# The adjoint and autograd through the solver each reach the exact gradient to about
# 10 x steps x rtol (test_adjoint's SEMINORM_ERROR_MULTIPLE; tens of steps here): 1e-6 is
# 10^4 x rtol, above that with room for the trace's second derivatives, and a missing
# term (the trace's, say) makes them differ by order one.
ADJOINT_VS_AUTOGRAD = 1e-6


def jacobians(field, z, t):
    """(batch, D, D) Jacobians df/dz by torch.func, one sample at a time."""
    f1 = lambda zz: field(zz[None], t)[0]
    return torch.stack([torch.func.jacrev(f1)(zi) for zi in z.detach()])


class LinearField(nn.Module):
    """f(z, t) = A z: the flow is e^{At} and log q falls by t tr(A), exactly."""

    def __init__(self, A):
        super().__init__()
        self.dim = A.shape[0]
        self.A = nn.Parameter(A.clone())

    def forward(self, z, t):
        return z @ self.A.T


@pytest.mark.parametrize("field", [PlanarField(2, 8), PlanarField(3, 5), MLPField(4, 16)])
def test_exact_trace_is_the_jacobians_trace(field):
    field = field.double()
    z = torch.randn(6, field.dim if hasattr(field, "dim") else 4, dtype=F64, requires_grad=True)
    t = torch.tensor(0.3, dtype=F64)
    tr = trace_exact(field(z, t), z, create_graph=False)
    J = jacobians(field, z, t)
    torch.testing.assert_close(tr, J.diagonal(dim1=1, dim2=2).sum(1))
    if isinstance(field, PlanarField):  # the paper's linear-cost closed form
        torch.testing.assert_close(tr, field.trace(z, t).detach())


def test_instantaneous_change_of_variables_on_a_linear_flow():
    A = torch.tensor([[-0.3, -1.0], [0.8, 0.2]], dtype=F64)
    cnf = CNF(LinearField(A), T=1.5, **TIGHT).double()
    z0 = torch.randn(7, 2, dtype=F64)
    x, logq = cnf.sample(7, z0=z0)
    torch.testing.assert_close(x, z0 @ torch.linalg.matrix_exp(1.5 * A).T)
    torch.testing.assert_close(logq, standard_normal_logprob(z0) - 1.5 * torch.trace(A))
    torch.testing.assert_close(cnf.log_prob(x), logq)  # and back, by reversing time


def test_cnf_density_integrates_to_one_and_sampling_inverts_it():
    torch.manual_seed(1)
    cnf = CNF(PlanarField(2, 8), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for p in cnf.parameters():
            p.mul_(2)  # a visibly non-Gaussian density
        pts, area = grid_points(7.0, 100)
        mass = float(cnf.log_prob(pts).exp().sum() * area)
        cnf = CNF(cnf.func.field, rtol=1e-8, atol=1e-8).double()
        z0 = torch.randn(64, 2, dtype=F64)
        x, logq = cnf.sample(64, z0=z0)
        # not the identity: an identity flow leaves z0 where it is and log q = log N(z0)
        assert float((logq - standard_normal_logprob(z0)).abs().max()) > 0.1
        # sampling, then reversing time: two solves at rtol 1e-8 agree to ~1e-7 or better
        torch.testing.assert_close(cnf.log_prob(x), logq, rtol=1e-6, atol=1e-6)
    # A midpoint sum of a smooth density on a 0.14 grid errs by O(h^2) times its curvature
    # (~1e-3 here), the tails past 7 standard deviations by e^-24, the solves by rtol 1e-5:
    # 0.01 is above all three; a density off by its log-determinant misses by far more.
    assert abs(mass - 1) < 0.01, mass


def kl_loss_at(cnf, z0):
    x, logq = cnf.sample(len(z0), z0=z0)
    return (logq + ENERGIES["ring"](x)).mean()


def _grads(cnf, loss_fn):
    cnf.zero_grad()
    loss = loss_fn(cnf)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in cnf.parameters()])


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("direction", ["log_prob", "sample"])
def test_adjoint_gradients_match_autograd_through_the_solver(trace, direction):
    torch.manual_seed(0)
    x = make_data("two moons", 16, seed=0).double()
    z0 = torch.randn(16, 2, dtype=F64)
    eps = hutchinson_probes((16, 2), dtype=F64)
    if direction == "log_prob":
        loss_fn = lambda m: -m.log_prob(x).mean()
    else:
        loss_fn = lambda m: kl_loss_at(m, z0)
    grads = {}
    for adjoint in (True, False):
        torch.manual_seed(0)
        cnf = CNF(PlanarField(2, 4, hyper_hidden=8), trace=trace, adjoint=adjoint,
                  **TIGHT).double()
        cnf._new_probe = lambda z, cnf=cnf: setattr(cnf.func, "eps", eps)  # one probe for both
        grads[adjoint] = _grads(cnf, loss_fn)
    rel = float((grads[True] - grads[False]).norm() / grads[False].norm())
    assert rel < ADJOINT_VS_AUTOGRAD, rel


def test_the_trace_term_reaches_the_parameters_through_the_adjoint():
    # The log-determinant part alone: its gradient exists only if the adjoint's
    # vector-Jacobian product differentiates the trace (second derivatives of f).
    torch.manual_seed(0)
    x = make_data("two circles", 8, seed=0).double()
    grads = {}
    for adjoint in (True, False):
        torch.manual_seed(0)
        cnf = CNF(PlanarField(2, 4, hyper_hidden=8), adjoint=adjoint, **TIGHT).double()
        grads[adjoint] = _grads(cnf, lambda m: m.flow(x, torch.zeros(8, dtype=F64), 1.0, 0.0)[1]
                                .sum())
    assert grads[False].norm() > 1e-3  # there is a gradient to compare
    assert float((grads[True] - grads[False]).norm() / grads[False].norm()) < ADJOINT_VS_AUTOGRAD


def test_hutchinson_is_unbiased_with_the_predicted_variance():
    field = MLPField(5, 16).double()
    z = torch.randn(3, 5, dtype=F64, requires_grad=True)
    t = torch.tensor(0.5, dtype=F64)
    fz = field(z, t)
    exact = trace_exact(fz, z, create_graph=True).detach()
    J = jacobians(field, z, t)
    S = (J + J.transpose(1, 2)) / 2
    offdiag = S.pow(2).sum((1, 2)) - S.diagonal(dim1=1, dim2=2).pow(2).sum(1)
    predicted = {"rademacher": 2 * offdiag, "gaussian": 2 * S.pow(2).sum((1, 2))}
    n = 4000
    gen = torch.Generator().manual_seed(0)
    for kind, var in predicted.items():
        est = torch.stack([
            trace_hutchinson(fz, z, hutchinson_probes(z.shape, kind, F64, generator=gen), True)
            for _ in range(n)])
        # six means against 4 standard errors: a false alarm once in 2,500 seeds. The
        # variance of n draws is itself off by sqrt((2 + kurtosis) / n), about 3%: 15% is 5x.
        se = est.std(0) / math.sqrt(n)
        assert ((est.mean(0) - exact).abs() < 4 * se).all(), (kind, est.mean(0), exact, se)
        torch.testing.assert_close(est.var(0), var, rtol=0.15, atol=1e-12)


def test_hutchinson_needs_a_probe_of_the_right_shape():
    func = CNFODEF(PlanarField(2, 3), trace="hutchinson")
    with pytest.raises(RuntimeError, match="probe"):
        func(torch.zeros(4, 3), torch.tensor(0.0))
    with pytest.raises(ValueError, match="unknown trace"):
        CNFODEF(PlanarField(2, 3), trace="cheap")
    with pytest.raises(ValueError, match="unknown probe"):
        hutchinson_probes((2, 2), "uniform")


def test_planar_flow_logdet_and_invertibility():
    torch.manual_seed(0)
    flow = PlanarFlow(2, 5, init_scale=1.0).double()
    with torch.no_grad():
        flow.u.copy_(-5 * flow.w)  # would make w.u < -1: u_hat must fix it
    assert ((flow.w * flow.u_hat()).sum(1) >= -1 - 1e-9).all()
    z = torch.randn(4, 2, dtype=F64)
    x, logdet = flow(z)
    J = torch.stack([torch.func.jacrev(lambda zz: flow(zz[None])[0][0])(zi) for zi in z])
    torch.testing.assert_close(logdet, torch.linalg.slogdet(J)[1])
    x2, logq = flow.sample(3)
    assert x2.shape == (3, 2) and logq.shape == (3,)


def test_energies_are_normalisable_and_kl_is_nonnegative():
    for name, energy in ENERGIES.items():
        log_z = energy_normalizer(energy)
        assert math.isfinite(log_z)
        # twice the spacing and a wider box: a midpoint sum of a smooth integrand that
        # vanishes at the box's edge converges faster than any power of the spacing
        # (Euler-Maclaurin), so both are the integral to far better than 1e-6
        assert abs(log_z - energy_normalizer(energy, lim=9.0, n=901)) < 1e-6, name
        torch.manual_seed(0)  # a standard normal q is a poor fit: KL clearly above 0
        q = PlanarFlow(2, 1).double()
        with torch.no_grad():
            x, logq = q.sample(20000)
            terms = logq + energy(x) + log_z
        kl, se = float(terms.mean()), float(terms.std() / math.sqrt(len(terms)))
        assert kl > 10 * se, (name, kl, se)  # KL >= 0, and this one is not 0 by chance
        with torch.no_grad():
            assert kl == pytest.approx(float(kl_loss(q, energy, 20000, log_z)), abs=10 * se)


def test_data_sets_and_the_gaussian_baseline():
    for name in DATASETS:
        a, b = make_data(name, 500, seed=3), make_data(name, 500, seed=3)
        assert a.shape == (500, 2) and torch.equal(a, b)
        assert not torch.equal(a, make_data(name, 500, seed=4))
    # The maximum-likelihood Gaussian's average NLL on its own data is exactly
    # log(2 pi) + log det(cov)/2 + D/2 with the (biased) sample covariance: D = 2 here.
    x = torch.randn(20000, 2, dtype=F64) * torch.tensor([1.0, 2.0], dtype=F64)
    nll = -float(GaussianBaseline(x).log_prob(x).mean())
    cov = torch.cov(x.T, correction=0)
    assert nll == pytest.approx(math.log(2 * math.pi) + 0.5 * float(torch.logdet(cov)) + 1.0,
                                abs=1e-10)


def test_support_fraction_separates_data_from_a_miss():
    ref, cal, new = (make_data("two circles", 1000, seed=s) for s in (0, 1, 2))
    frac, r = support_fraction(new, ref, cal, quantile=0.95)
    assert r == float(torch.quantile(torch.cdist(cal, ref).min(1).values, 0.95))
    # fresh data scores 0.95 up to the binomial spread of 1000 points (SE 0.007) and the
    # calibration set's own: 0.9 is seven standard errors below
    assert frac > 0.9, frac
    # points on a circle of radius 3.5, 1.5 (nine noise deviations) past the outer circle:
    # no data point lies within r of them, so half such points halve the score exactly
    far = 3.5 * torch.stack([torch.cos(torch.arange(500.0)), torch.sin(torch.arange(500.0))], 1)
    assert support_fraction(far, ref, cal)[0] == 0.0
    half, _ = support_fraction(torch.cat([new[:500], far]), ref, cal)
    assert half == pytest.approx(support_fraction(new[:500], ref, cal)[0] / 2)


def test_nll_gap_is_the_paired_mean_and_its_standard_error():
    # Two Gaussians with known log-densities: the gap per point is exact, so its mean and
    # standard error are the plain sample statistics of those differences
    x = make_data("two moons", 3000, seed=0).double()
    wide = GaussianBaseline(x)
    narrow = GaussianBaseline(x[:200])
    lp_narrow, lp_wide = log_probs(narrow, x, chunk=512), log_probs(wide, x, chunk=512)
    assert torch.equal(lp_wide, wide.log_prob(x))  # chunks joined in order
    mean, se = nll_gap(lp_narrow, lp_wide)
    d = wide.log_prob(x) - narrow.log_prob(x)
    assert mean == pytest.approx(float(d.mean()), rel=1e-12)
    assert se == pytest.approx(float(d.std()) / math.sqrt(3000), rel=1e-12)
    assert mean == pytest.approx(nll(narrow, x) - nll(wide, x), rel=1e-9)
    assert nll_gap(lp_wide, lp_wide) == (0.0, 0.0)


def test_a_fresh_planar_flow_starts_near_the_identity():
    # Rezende and Mohamed's m(x) = -1 + softplus(x) gives u_hat ~ 0.31 w/|w|^2 for a small w:
    # 64 such layers at initialisation scored an NLL of 25 on data a Gaussian scores 3 on.
    torch.manual_seed(0)
    flow = PlanarFlow(2, 64)
    x = make_data("two circles", 1000, seed=0)
    with torch.no_grad():
        gap = (flow.log_prob(x) - standard_normal_logprob(x)).abs().mean()
    assert gap < 0.05, gap  # the shifted m(x): 0.05 nats a point, against 22 without it


class _LinearField(nn.Module):
    """f(z, t) = A z: its regularisers have closed forms."""

    def __init__(self, A):
        super().__init__()
        self.A, self.dim = nn.Parameter(A), A.shape[0]

    def forward(self, z, t):
        return z @ self.A.T


def test_regularisers_match_their_closed_forms_on_a_linear_field():
    """B = T |A|_F^2 (a constant integrand); K = int_0^T |A z(t)|^2 dt along the exact path
    z(t) = expm(A (t - T)) x, by a fine trapezoid rule; log p as the plain CNF gives it."""
    A = torch.tensor([[-0.5, 1.0], [-1.0, 0.3]], dtype=torch.float64)
    model = RegularisedCNF(_LinearField(A.clone()), rtol=1e-10, atol=1e-10)
    x = torch.tensor([[0.7, -0.2], [1.5, 0.4]], dtype=torch.float64)
    logp, kinetic, frob = model.log_prob_and_regularisers(x)
    assert torch.allclose(frob, torch.full_like(frob, float((A * A).sum())), rtol=1e-8)
    ts = torch.linspace(0, 1, 4001, dtype=torch.float64)
    path = torch.linalg.matrix_exp(A * (ts[:, None, None] - 1)) @ x.T  # (T, 2, n)
    speed2 = ((A @ path) ** 2).sum(1)  # (T, n)
    exact_k = torch.trapezoid(speed2, ts, dim=0)
    assert torch.allclose(kinetic, exact_k, rtol=1e-6)  # trapezoid error ~ h^2 / 12 ~ 1e-8
    plain = CNF(model.func.field, rtol=1e-10, atol=1e-10)
    assert torch.allclose(logp, plain.log_prob(x), rtol=1e-8, atol=1e-10)
    (-logp.mean() + kinetic.mean() + frob.mean()).backward()
    assert model.func.field.A.grad is not None and torch.isfinite(model.func.field.A.grad).all()


def test_hutchinson_variance_is_the_exact_variance_over_every_rademacher_probe():
    """All 2^D sign vectors are equally likely: their mean and variance are exact."""
    import itertools

    torch.manual_seed(0)
    J = torch.randn(4, 3, 3, dtype=torch.float64)
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=3)), dtype=torch.float64)
    values = torch.einsum("pi,nij,pj->np", signs, J, signs)  # every probe's estimate
    assert torch.allclose(values.mean(1), torch.diagonal(J, dim1=1, dim2=2).sum(1))
    assert torch.allclose(values.var(1, unbiased=False), cnf.hutchinson_variance(J))


def test_hutchinson_variance_for_gaussian_probes_is_half_the_symmetric_part_squared():
    # Var(e^T J e) = Var(e^T S e) with S = (J + J^T)/2, and for Gaussian e that is 2|S|_F^2
    torch.manual_seed(1)
    J = torch.randn(5, 4, 4, dtype=torch.float64)
    S = (J + J.transpose(1, 2)) / 2
    assert torch.allclose(cnf.hutchinson_variance(J, "gaussian"), 2 * S.square().sum((1, 2)))
    with pytest.raises(ValueError, match="unknown probe"):
        cnf.hutchinson_variance(J, "uniform")


def test_jacobian_rows_match_autograd_functional():
    torch.manual_seed(2)
    field = cnf.MLPField(3, 8).double()
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64)
    J = cnf.jacobian_rows(field(z, t), z)
    for n in range(2):
        ref = torch.autograd.functional.jacobian(lambda v: field(v[None], t)[0], z[n].detach())
        assert torch.allclose(J[n], ref)
