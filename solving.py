"""solving: what notebook 07 needs beyond odecore: problems whose solutions are known
or stiff, and the solver runs the notebook measures.

* `Front`: a stable problem whose solution is y = tanh(k (t - t_c)), a front that
  the adaptive solver must resolve with small steps and may leave with large ones.
* `VanDerPol`: the oscillator in the scaling of Hairer & Wanner (y1' = y2,
  y2' = mu ((1 - y1^2) y2 - y1)), whose period stays near 1.6 as mu grows while
  its stiffness grows with mu.
* `dopri5_run`: one dopri5 solve with its evaluations and its step history.

The notebook builds its implicit solver itself (DESIGN.md: a method is built in
front of the reader before a module holds it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import augment
import nbutils
import odecore
from cnf import trace_and_frobenius
from odecore import NNODEF, ODEF, NeuralODE

__all__ = ["Settings", "settings", "Front", "VanDerPol", "dopri5_run", "tolerance_table",
           "RegularisedField", "train_regularised_classifier"]


@dataclass(frozen=True)
class Settings:
    """One budget of notebook 07: the tolerances of the front, the stiffness parameters
    of Van der Pol's oscillator, the regularised CNFs' weights and training, and the
    training of the "is it an ODE" classifiers."""

    rtols: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
    mus: tuple[float, ...] = (1, 10, 100, 1_000, 10_000, 100_000)
    ros2_rtols: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)
    toy_iters: int = 1500
    toy_points: int = 2000
    n_test_images: int = 2000
    reg_lams: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1)
    reg_pick: float = 0.05  # the weight the checks read
    reg_steps: int = 500
    reg_train: int = 20000
    reg_test: int = 5000
    reg_classifier_iters: int = 1500


def settings(budget: str) -> Settings:
    """smoke: the mild settings only (under a minute); quick: the notebook in a few
    minutes on 2 CPU cores; full: the same, with longer training of the classifiers."""
    table = {
        "smoke": Settings(rtols=(1e-3, 1e-5, 1e-7), mus=(1, 10, 100),
                          toy_iters=30, toy_points=256, n_test_images=200,
                          reg_lams=(0.0, 0.05), reg_steps=10, reg_train=2000, reg_test=500,
                          reg_classifier_iters=10),
        "quick": Settings(),
        "full": Settings(toy_iters=6000, n_test_images=10000, reg_steps=2000,
                         reg_train=100000, reg_test=20000, reg_classifier_iters=4500),
    }
    return nbutils.for_budget(table, budget)


class Front(ODEF):
    """y' = g'(t) - (y - g(t)) with g(t) = tanh(k (t - t_c)), solved by y = g from
    y(0) = g(0): flat, a steep front at t_c, flat again. The relaxation term keeps the
    problem stable (an error decays like e^-t), so the global error measures the
    solver, not an amplifying problem."""

    def __init__(self, k: float = 20.0, t_c: float = 1.0):
        super().__init__()
        self.k, self.t_c = k, t_c

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        g = self.exact(t)
        return self.k * (1 - g * g) - (y - g)

    def exact(self, t: Tensor) -> Tensor:
        return torch.tanh(self.k * (t - self.t_c))


class VanDerPol(ODEF):
    """Van der Pol's oscillator, state (y1, y2), scaled so that mu sets the stiffness:
    near the slow curve the Jacobian has an eigenvalue of about -mu (y1^2 - 1)."""

    def __init__(self, mu: float):
        super().__init__()
        self.mu = mu

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        y1, y2 = y[..., 0], y[..., 1]
        return torch.stack((y2, self.mu * ((1 - y1 * y1) * y2 - y1)), dim=-1)


def dopri5_run(f: ODEF, y0: Tensor, t: Tensor, rtol: float, atol: float,
               max_steps: int = 10_000_000) -> dict:
    """One dopri5 solve of `f` over the grid `t`: the states, the evaluations of f, the
    steps it tried (`odecore.step_history`) and the seconds."""
    f.nfe = 0
    start = time.perf_counter()
    with torch.no_grad(), odecore.step_history() as steps:
        ys = odecore.odeint(f, y0, t, method="dopri5", rtol=rtol, atol=atol,
                            max_steps=max_steps)
    return dict(ys=ys, nfe=f.nfe, steps=list(steps), seconds=time.perf_counter() - start)


def tolerance_table(f: Front, rtols, t_end: float = 2.0) -> list[dict]:
    """dopri5 on the front from t = 0 to `t_end` at each rtol (atol = rtol / 1000), in
    float64: the global error at the end against the exact solution, the evaluations,
    and the accepted and rejected steps."""
    t = torch.tensor([0.0, t_end], dtype=torch.float64)
    y0 = f.exact(t[:1]).reshape(1, 1)
    rows = []
    for rtol in rtols:
        run = dopri5_run(f, y0, t, rtol=rtol, atol=rtol / 1000)
        error = float((run["ys"][-1, 0, 0] - f.exact(t[-1])).abs())
        accepted = sum(s.accepted for s in run["steps"])
        rows.append(dict(rtol=rtol, error=error, nfe=run["nfe"], accepted=accepted,
                         rejected=len(run["steps"]) - accepted,
                         digits=-math.log10(max(error, 1e-300))))
    return rows


class RegularisedField(ODEF):
    """d[z, K, B]/dt = [f(z, t), |f|^2, |df/dz|_F^2]: `field`'s flow with Finlay et al.'s
    kinetic energy and Jacobian norm integrated alongside (the Jacobian exact, row by
    row: the classifiers here are 2-D)."""

    def __init__(self, field: ODEF):
        super().__init__()
        self.field = field

    def forward(self, state: Tensor, t: Tensor) -> Tensor:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = state[:, :-2]
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            fz = self.field(z, t)
            _, frob = trace_and_frobenius(fz, z)
        out = torch.cat([fz, (fz * fz).sum(1, keepdim=True), frob[:, None]], 1)
        return out if create_graph else out.detach()


def train_regularised_classifier(job: dict) -> dict:
    """Notebook 06's plain Neural ODE on the annuli (a time-dependent MLP field of 32 units,
    dopri5 at rtol 1e-3, the adjoint, a linear readout), trained by cross-entropy plus
    `lam` (K + B): the forward NFE per iteration, the held-out accuracy, the seconds."""
    torch.manual_seed(job.get("seed", 0))
    ode = NeuralODE(RegularisedField(NNODEF(2, 32)), method="dopri5", rtol=1e-3, atol=1e-4)
    readout = nn.Linear(2, 2)
    params = list(ode.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=job.get("lr", 3e-3))
    x, y = augment.annuli_data(job["n"], seed=0)
    g = torch.Generator().manual_seed(job.get("seed", 0))
    nfe, start = [], time.perf_counter()
    for _ in range(job["iters"]):
        idx = torch.randint(len(x), (128,), generator=g)
        out = ode(torch.cat([x[idx], x.new_zeros(128, 2)], 1))
        loss = F.cross_entropy(readout(out[:, :2]), y[idx]) + job["lam"] * out[:, 2:].sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nfe.append(ode.nfe_forward)
    seconds = time.perf_counter() - start
    xt, yt = augment.annuli_data(job["n"], seed=1)
    with torch.no_grad():
        logits = readout(ode(torch.cat([xt, xt.new_zeros(len(xt), 2)], 1))[:, :2])
    return dict(lam=job["lam"], nfe=nfe, seconds=seconds,
                accuracy=float((logits.argmax(1) == yt).float().mean()))
