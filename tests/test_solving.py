"""solving: notebook 07's problems, against their known solutions and structure."""

import pytest
import torch

import odecore
from solving import Front, RegularisedField, VanDerPol, dopri5_run, settings, tolerance_table

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerical]


def test_front_solves_its_own_equation():
    """y = tanh(k (t - t_c)) satisfies y' = f(y, t): its derivative by autograd equals f."""
    front = Front(k=20.0)
    t = torch.linspace(0, 2, 101, dtype=torch.float64, requires_grad=True)
    y = front.exact(t)
    dy = torch.autograd.grad(y.sum(), t)[0]
    assert torch.allclose(dy, front(y.detach(), t.detach()), rtol=1e-12, atol=1e-12)


def test_tolerance_table_error_falls_with_rtol_and_steps_are_rejected():
    rows = tolerance_table(Front(), [1e-3, 1e-5, 1e-7])
    errors = [r["error"] for r in rows]
    assert errors[0] > errors[1] > errors[2]
    # dopri5 keeps a stable problem's global error near its tolerance: within 100x
    assert all(r["error"] < 100 * r["rtol"] for r in rows)
    assert all(r["rejected"] > 0 for r in rows) and rows[0]["nfe"] < rows[-1]["nfe"]


def test_van_der_pol_is_stiff_along_its_slow_curve():
    """At (2, -2/3), on the slow curve, the Jacobian has an eigenvalue near -3 mu."""
    mu = 1000.0
    J = torch.autograd.functional.jacobian(
        lambda y: VanDerPol(mu)(y, torch.tensor(0.0)), torch.tensor([2.0, -2 / 3],
                                                                  dtype=torch.float64))
    eig = torch.linalg.eigvals(J).real
    assert float(eig.min()) == pytest.approx(-3 * mu, rel=0.01)


def test_dopri5_run_counts_and_records():
    y0 = torch.tensor([[2.0, -0.66]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    run = dopri5_run(VanDerPol(10.0), y0, t, rtol=1e-6, atol=1e-6)
    assert run["nfe"] > 0 and run["ys"].shape == (2, 1, 2)
    assert sum(s.h for s in run["steps"] if s.accepted) == pytest.approx(0.5, abs=1e-12)
    plain = odecore.odeint(VanDerPol(10.0), y0, t, method="dopri5", rtol=1e-6, atol=1e-6)
    assert torch.equal(run["ys"], plain)


def test_settings_per_budget():
    assert max(settings("quick").mus) > max(settings("smoke").mus)
    with pytest.raises(ValueError):
        settings("huge")


def test_regularised_field_integrates_kinetic_energy_and_jacobian_norm():
    """On f = A z: d/dt B = |A|_F^2 (constant), and K = int |A z(t)|^2 dt on z = expm(A t) z0."""
    A = torch.tensor([[-0.5, 1.0], [-1.0, 0.3]], dtype=torch.float64)
    lin = odecore.LinearODEF(A)
    z0 = torch.tensor([[0.7, -0.2], [1.5, 0.4]], dtype=torch.float64)
    state0 = torch.cat([z0, torch.zeros(2, 2, dtype=torch.float64)], 1)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        out = odecore.odeint(RegularisedField(lin), state0, t, method="dopri5", rtol=1e-10,
                             atol=1e-12)[-1]
    ts = torch.linspace(0, 1, 4001, dtype=torch.float64)
    path = torch.linalg.matrix_exp(A * ts[:, None, None]) @ z0.T  # (T, 2, n)
    exact_k = torch.trapezoid(((A @ path) ** 2).sum(1), ts, dim=0)  # error ~ h^2 / 12
    assert torch.allclose(out[:, 2], exact_k, rtol=1e-6)
    assert torch.allclose(out[:, 3], torch.full((2,), float((A * A).sum()),
                                                dtype=torch.float64), rtol=1e-9)
    assert torch.allclose(out[:, :2], path[-1].T, rtol=1e-8)
