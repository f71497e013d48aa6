"""cnf: continuous normalizing flows (the paper's Section 4), built on odecore.

Read top to bottom:

1. targets: the energy functions of Rezende & Mohamed (2015) and two 2-D data sets;
2. `PlanarFlow`: the discrete baseline, K planar layers with their log-determinants;
3. fields f(z, t): the paper's `PlanarField` (M gated planar units whose parameters a
   hypernetwork computes from t) and `MLPField` (a plain MLP, for the cost-against-D
   measurement);
4. `CNFODEF`: the augmented dynamics d[z, log p]/dt = [f, -tr(df/dz)], the trace exact
   (D autograd passes) or Hutchinson's estimate (one pass);
5. `CNF`: log-densities by integrating data back to noise, samples by integrating noise
   forward, both through `odecore.NeuralODE` (the adjoint by default);
6. training loops, evaluation and measurement helpers the notebook calls.

The state is one tensor `(batch, D + 1)`: z in the first D columns, log p in the last.
Second derivatives (the trace's gradient) reach the parameters through `ODEAdjoint`
because `CNFODEF.forward` builds the trace with `create_graph` whenever the caller
records a graph, as `ODEF.forward_with_grad` does in the adjoint's backward pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odecore import ODEF, NeuralODE

__all__ = [
    "Settings", "settings", "ENERGIES", "energy_normalizer", "make_data", "DATASETS",
    "standard_normal_logprob",
    "PlanarFlow", "PlanarField", "MLPField", "CNFODEF", "CNF", "GaussianBaseline",
    "kl_loss", "train_density_matching", "train_max_likelihood", "nll", "trace_exact",
    "hutchinson_probes", "support_fraction", "grid_points",
    "make_model", "with_tolerance", "fit_density_matching", "fit_max_likelihood", "load_model",
]

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Settings:
    """One budget of notebook 05: training steps and model sizes of the fits, data and
    evaluation sizes (histograms, density grids, probes), and the GIF's frames."""

    dm_steps: int = 250
    dm_sizes: tuple[int, ...] = (2, 8, 32)
    ml_steps: int = 500
    n_train: int = 20000
    n_test: int = 5000
    hist: int = 20000
    grid: int = 80
    dims: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    probes: int = 10000
    gif_frames: int = 12


def settings(budget: str) -> Settings:
    """smoke: everything once, in seconds; quick: the committed run; full: the paper's
    scale of training and evaluation."""
    table = {
        "smoke": Settings(dm_steps=15, dm_sizes=(2, 8), ml_steps=10, n_train=2000, n_test=500,
                          hist=2000, grid=40, dims=(2, 8), probes=500, gif_frames=4),
        "quick": Settings(),
        "full": Settings(dm_steps=10000, ml_steps=10000, n_train=100000, n_test=20000,
                         hist=100000, grid=200, probes=100000, gif_frames=60),
    }
    if budget not in table:
        raise ValueError(f"unknown budget {budget!r}; use one of {', '.join(table)}")
    return table[budget]
_SHIFT = math.log(math.e - 1)  # softplus(_SHIFT) = 1


# ---------------------------------------------------------------------------
# 1. Targets
# ---------------------------------------------------------------------------
def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _box(z: Tensor) -> Tensor:
    # U2 and U3 do not depend on z1 far out, so exp(-U) would not integrate; Rezende and
    # Mohamed plot them on [-4, 4]^2. This soft wall at |z1| = 4 makes them normalisable.
    return 0.5 * (z[:, 0] / 4) ** 8


def energy_ring(z: Tensor) -> Tensor:
    """U1: a ring of radius 2 with two modes, at z1 = +-2."""
    r = z.norm(dim=1)
    modes = torch.logsumexp(torch.stack([-0.5 * ((z[:, 0] - 2) / 0.6) ** 2,
                                         -0.5 * ((z[:, 0] + 2) / 0.6) ** 2]), 0)
    return 0.5 * ((r - 2) / 0.4) ** 2 - modes


def energy_wave(z: Tensor) -> Tensor:
    """U2: a sine wave, z2 = sin(pi z1 / 2), within a soft box |z1| < 4."""
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2 + _box(z)


def energy_split_wave(z: Tensor) -> Tensor:
    """U3: the wave and a copy of it displaced near z1 = 1, within a soft box."""
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w2(z)) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), 0) + _box(z)


ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {
    "ring": energy_ring, "wave": energy_wave, "split wave": energy_split_wave}


def grid_points(lim: float = 4.0, n: int = 200, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """(n*n, 2) points of a square grid on [-lim, lim]^2 and the area of one cell."""
    xs = torch.linspace(-lim, lim, n, dtype=dtype)
    X, Y = torch.meshgrid(xs, xs, indexing="xy")
    return torch.stack([X.flatten(), Y.flatten()], 1), float(xs[1] - xs[0]) ** 2


def energy_normalizer(energy: Callable[[Tensor], Tensor], lim: float = 7.0,
                      n: int = 1401) -> float:
    """log Z = log of the integral of exp(-U) on a fine grid, so that KL(q||p) is in nats."""
    pts, area = grid_points(lim, n, torch.float64)
    return float(torch.logsumexp(-energy(pts), 0) + math.log(area))


# Noise relative to size as in FFJORD's toy data (scikit-learn's make_circles with factor 0.5
# and noise 0.08, scaled by 3; make_moons with noise 0.1, scaled by 2).
def _two_circles(n: int, gen: torch.Generator) -> Tensor:
    r = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, 2.0)
    angle = 2 * math.pi * torch.rand(n, generator=gen)
    x = torch.stack([r * angle.cos(), r * angle.sin()], 1)
    return x + 0.16 * torch.randn(n, 2, generator=gen)


def _two_moons(n: int, gen: torch.Generator) -> Tensor:
    upper = torch.rand(n, generator=gen) < 0.5
    angle = math.pi * torch.rand(n, generator=gen)
    x = torch.where(upper[:, None], torch.stack([angle.cos(), angle.sin()], 1),
                    torch.stack([1 - angle.cos(), 0.5 - angle.sin()], 1))
    x = x + 0.1 * torch.randn(n, 2, generator=gen)
    return (x - torch.tensor([0.5, 0.25])) * 2.0  # centred, about as wide as the circles


DATASETS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "two circles": _two_circles, "two moons": _two_moons}


def make_data(name: str, n: int, seed: int) -> Tensor:
    """n points of a 2-D data set (float32), reproducible from the seed."""
    return DATASETS[name](n, torch.Generator().manual_seed(seed))


def standard_normal_logprob(z: Tensor) -> Tensor:
    """log N(z; 0, I), one value per row."""
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * LOG_2PI)


# ---------------------------------------------------------------------------
# 2. The discrete baseline: planar flows (Rezende & Mohamed, 2015)
# ---------------------------------------------------------------------------
class PlanarFlow(nn.Module):
    """K planar layers z <- z + u_hat tanh(w.z + b), each with its log|det J|.

    u_hat = u + (m(w.u) - w.u) w/|w|^2 with m(x) > -1 keeps w.u_hat > -1, which makes
    every layer invertible (Rezende & Mohamed, appendix A.1). Their m(x) = -1 + softplus(x)
    has m(0) = -0.31, so a small w at initialisation gives a huge u_hat (0.31/|w|) and a
    flow that starts far from the identity (NLL 25 instead of 3 on our data); shifting it,
    m(x) = -1 + softplus(x + log(e - 1)), gives m(0) = 0: u_hat = u at w.u = 0.
    """

    def __init__(self, dim: int, K: int, init_scale: float = 0.01):
        super().__init__()
        self.u = nn.Parameter(init_scale * torch.randn(K, dim))
        self.w = nn.Parameter(init_scale * torch.randn(K, dim))
        self.b = nn.Parameter(torch.zeros(K))

    def u_hat(self) -> Tensor:
        wu = (self.w * self.u).sum(1, keepdim=True)
        w2 = self.w.pow(2).sum(1, keepdim=True) + 1e-12
        return self.u + (-1 + F.softplus(wu + _SHIFT) - wu) * self.w / w2

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(f_K o ... o f_1 (z), sum_k log|det df_k/dz|)."""
        u = self.u_hat()
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for k in range(u.shape[0]):
            h = torch.tanh(z @ self.w[k] + self.b[k])
            psi = (1 - h ** 2)[:, None] * self.w[k]
            logdet = logdet + torch.log((1 + psi @ u[k]).abs() + 1e-9)
            z = z + h[:, None] * u[k]
        return z, logdet

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Samples x = f(z0), z0 ~ N(0, I), with log q(x) (density matching)."""
        p = self.u
        z0 = torch.randn(n, p.shape[1], dtype=p.dtype, device=p.device)
        x, logdet = self(z0)
        return x, standard_normal_logprob(z0) - logdet

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) when the flow maps data to noise (maximum likelihood)."""
        z, logdet = self(x)
        return standard_normal_logprob(z) + logdet


class GaussianBaseline:
    """A single Gaussian fitted by maximum likelihood: the floor any flow must beat."""

    def __init__(self, x: Tensor):
        x = x.double()
        cov = torch.cov(x.T, correction=0)  # the maximum-likelihood (biased) covariance
        self.dist = torch.distributions.MultivariateNormal(x.mean(0), cov)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.dist.log_prob(x.double()).to(x.dtype)

    def sample(self, n: int) -> Tensor:
        return self.dist.sample((n,)).float()


# ---------------------------------------------------------------------------
# 3. Fields f(z, t)
# ---------------------------------------------------------------------------
class PlanarField(nn.Module):
    """The paper's CNF dynamics: f(z, t) = (1/M) sum_m sigma(g_m(t)) u_m(t) tanh(w_m(t).z + b_m(t)).

    M planar units whose parameters (u, w, b) and gate g are the output of a small
    hypernetwork of t. Each unit adds u.w tanh' to the trace, so the trace of M units
    costs O(M) (the paper's "multiple hidden units with linear cost").
    The 1/M (a mean, as in torchdiffeq's CNF example) keeps one Adam step from moving f
    M times as far for M units: with a plain sum, M = 64 at lr 1e-2 trained unstably
    (forward NFE past 280 within 250 steps on Two Circles).
    """

    def __init__(self, dim: int, M: int, hyper_hidden: int = 32):
        super().__init__()
        self.dim, self.M = dim, M
        self.hyper = nn.Sequential(
            nn.Linear(1, hyper_hidden), nn.Tanh(),
            nn.Linear(hyper_hidden, hyper_hidden), nn.Tanh(),
            nn.Linear(hyper_hidden, M * (2 * dim + 2)))

    def params_at(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(w (M, D), u (M, D), b (M,), gate (M,)) at time t (a 0-d tensor)."""
        p = self.hyper(t.reshape(1, 1)).reshape(self.M, 2 * self.dim + 2)
        D = self.dim
        return p[:, :D], p[:, D:2 * D], p[:, 2 * D], torch.sigmoid(p[:, 2 * D + 1])

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        w, u, b, gate = self.params_at(t)
        return torch.tanh(z @ w.T + b) @ (gate[:, None] * u) / self.M

    def trace(self, z: Tensor, t: Tensor) -> Tensor:
        """The closed form: (1/M) sum_m sigma(g_m) (u_m.w_m) (1 - tanh^2(w_m.z + b_m))."""
        w, u, b, gate = self.params_at(t)
        return (1 - torch.tanh(z @ w.T + b) ** 2) @ (gate * (u * w).sum(1)) / self.M


class MLPField(nn.Module):
    """A plain MLP f([z, t]): a field whose trace has no closed form (cost against D)."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Softplus(),
                                 nn.Linear(hidden, hidden), nn.Softplus(),
                                 nn.Linear(hidden, dim))

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([z, t.expand(z.shape[0], 1)], 1))


# ---------------------------------------------------------------------------
# 4. The augmented dynamics
# ---------------------------------------------------------------------------
def trace_exact(fz: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """tr(df/dz) per sample by D vector-Jacobian products (one per coordinate)."""
    tr = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        last = i == z.shape[1] - 1
        g = torch.autograd.grad(fz[:, i].sum(), z, create_graph=create_graph,
                                retain_graph=create_graph or not last)[0]
        tr = tr + g[:, i]
    return tr


def trace_hutchinson(fz: Tensor, z: Tensor, eps: Tensor, create_graph: bool) -> Tensor:
    """eps^T (df/dz) eps per sample: one vector-Jacobian product, unbiased for the trace."""
    g = torch.autograd.grad(fz, z, eps, create_graph=create_graph,
                            retain_graph=create_graph)[0]
    return (g * eps).sum(1)


class CNFODEF(ODEF):
    """d[z, log p]/dt = [f(z, t), -tr(df/dz)] on a state `(batch, D + 1)`.

    `trace="exact"` takes D autograd passes; `"hutchinson"` takes one, with the probe
    `eps` (one per sample) that `CNF` draws before each solve and keeps fixed through it,
    the backward (adjoint) solve included, so that both solve the same ODE.
    The trace keeps its graph (`create_graph`) whenever the caller records one: then
    gradients of the log-density reach the parameters, through the solver or the adjoint.
    """

    TRACES = ("exact", "hutchinson")

    def __init__(self, field: nn.Module, trace: str = "exact"):
        super().__init__()
        if trace not in self.TRACES:
            raise ValueError(f"unknown trace {trace!r}; choose one of {self.TRACES}")
        self.field, self.trace = field, trace
        self.eps: Tensor | None = None

    def forward(self, state: Tensor, t: Tensor) -> Tensor:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not state.requires_grad:  # nobody needs d/dstate: a fresh leaf to trace by
                state = state.detach().requires_grad_(True)
            z = state[:, :-1]
            fz = self.field(z, t)
            if self.trace == "exact":
                tr = trace_exact(fz, z, create_graph)
            else:
                if self.eps is None or self.eps.shape != z.shape:
                    raise RuntimeError("Hutchinson's trace needs a probe eps of z's shape; "
                                       "CNF draws one before each solve")
                tr = trace_hutchinson(fz, z, self.eps, create_graph)
        out = torch.cat([fz, -tr[:, None]], 1)
        return out if create_graph else out.detach()


# ---------------------------------------------------------------------------
# 5. The flow
# ---------------------------------------------------------------------------
class CNF(nn.Module):
    """A continuous normalizing flow: noise z(0) ~ N(0, I) flows to data x = z(T).

    `log_prob(x)` integrates [x, 0] from T back to 0: log p(x) = log N(z(0)) - Delta,
    where Delta = int_0^T tr(df/dz) dt accumulates in the last column.
    `sample(n)` integrates [z0, log N(z0)] from 0 to T and returns (x, log q(x)).
    """

    def __init__(self, field: nn.Module, T: float = 1.0, trace: str = "exact",
                 method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 adjoint: bool = True, probe: str = "rademacher", **ode_kwargs):
        super().__init__()
        self.func = CNFODEF(field, trace)
        self.ode = NeuralODE(self.func, method=method, rtol=rtol, atol=atol,
                             adjoint=adjoint, **ode_kwargs)
        self.T, self.probe = T, probe

    @property
    def dim(self) -> int:
        return self.func.field.dim

    def _times(self, t0: float, t1: float, like: Tensor) -> Tensor:
        return torch.tensor([t0, t1], dtype=like.dtype, device=like.device)

    def _new_probe(self, z: Tensor) -> None:
        if self.func.trace == "hutchinson":
            self.func.eps = hutchinson_probes(z.shape, self.probe, z.dtype, z.device)

    def flow(self, z: Tensor, logp: Tensor, t0: float, t1: float) -> tuple[Tensor, Tensor]:
        """(z(t1), log p(t1)) from (z(t0), log p(t0))."""
        self._new_probe(z)
        out = self.ode(torch.cat([z, logp[:, None]], 1), self._times(t0, t1, z))
        return out[:, :-1], out[:, -1]

    def log_prob(self, x: Tensor, t: float | None = None) -> Tensor:
        """log p_t(x), the density at time t (default T, the data end)."""
        t = self.T if t is None else t
        z0, delta = self.flow(x, torch.zeros_like(x[:, 0]), t, 0.0)
        return standard_normal_logprob(z0) - delta

    def sample(self, n: int, z0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x, log q(x)): noise integrated forward to T."""
        if z0 is None:
            p = next(self.parameters())
            z0 = torch.randn(n, self.dim, dtype=p.dtype, device=p.device)
        return self.flow(z0, standard_normal_logprob(z0), 0.0, self.T)

    @torch.no_grad()
    def trajectory(self, z0: Tensor, fractions: Sequence[float]) -> Tensor:
        """States z(f T) for each fraction f (0 < f <= 1): `(len(fractions), n, D)`."""
        self._new_probe(z0)
        t = torch.tensor([0.0] + [f * self.T for f in fractions], dtype=z0.dtype,
                         device=z0.device)
        state = torch.cat([z0, torch.zeros_like(z0[:, :1])], 1)
        return self.ode(state, t, return_whole_sequence=True)[1:, :, :-1]


# ---------------------------------------------------------------------------
# 6. Training, evaluation, measurement
# ---------------------------------------------------------------------------
def kl_loss(model: nn.Module, energy: Callable[[Tensor], Tensor], n: int,
            log_z: float = 0.0) -> Tensor:
    """Monte-Carlo KL(q||p) = E_q[log q(x) + U(x)] + log Z, with x ~ q (reparameterised)."""
    x, logq = model.sample(n)
    return (logq + energy(x)).mean() + log_z


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Cosine decay to 1% of lr: the last steps polish instead of jumping around."""
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def train_density_matching(model: nn.Module, energy: Callable[[Tensor], Tensor],
                           steps: int, batch: int = 128, lr: float = 1e-2) -> list[float]:
    """Adam on the reverse KL; the losses per step (nats, up to log Z)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        loss = kl_loss(model, energy, batch)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def train_max_likelihood(model: nn.Module, data: Tensor, steps: int, batch: int = 256,
                         lr: float = 1e-2, seed: int = 0) -> dict[str, list]:
    """Adam on the NLL of mini-batches; per step: loss, and NFE forward/backward for a CNF."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list] = {"loss": [], "nfe_f": [], "nfe_b": []}
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        hist["loss"].append(float(loss.detach()))
        if isinstance(model, CNF):
            hist["nfe_f"].append(model.ode.nfe_forward)
            hist["nfe_b"].append(model.ode.nfe_backward)
    return hist


@torch.no_grad()
def nll(model, x: Tensor, chunk: int = 2048) -> float:
    """Mean negative log-likelihood (nats per point) of held-out data."""
    return float(torch.cat([-model.log_prob(c) for c in x.split(chunk)]).mean())


def hutchinson_probes(shape: Sequence[int], kind: str = "rademacher",
                      dtype=torch.float32, device=None, generator=None) -> Tensor:
    """Probe vectors with E[eps eps^T] = I: Rademacher (+-1) or standard Gaussian."""
    if kind == "gaussian":
        return torch.randn(*shape, dtype=dtype, device=device, generator=generator)
    if kind != "rademacher":
        raise ValueError(f"unknown probe {kind!r}; choose 'rademacher' or 'gaussian'")
    bits = torch.randint(0, 2, tuple(shape), device=device, generator=generator)
    return (2 * bits - 1).to(dtype)


def support_fraction(samples: Tensor, reference: Tensor, calibration: Tensor,
                     quantile: float = 0.95) -> tuple[float, float]:
    """Share of samples within radius r of some reference point, and r.

    r is the `quantile` of the calibration points' distances to their nearest reference
    point: held-out data itself scores `quantile`, a model that misses the data scores less.
    """
    r = float(torch.quantile(torch.cdist(calibration, reference).min(1).values, quantile))
    d = torch.cdist(samples, reference).min(1).values
    return float((d <= r).float().mean()), r


# ---------------------------------------------------------------------------
# 7. One fit per job, for `workers.run` (the notebook's experiments)
# ---------------------------------------------------------------------------
def make_model(kind: str, size: int, dim: int = 2, trace: str = "exact",
               rtol: float = 1e-5, atol: float = 1e-5) -> nn.Module:
    """'nf': K = size planar layers; 'cnf': the paper's CNF with M = size units (dopri5)."""
    if kind == "nf":
        return PlanarFlow(dim, size)
    if kind == "cnf":
        return CNF(PlanarField(dim, size), trace=trace, rtol=rtol, atol=atol)
    raise ValueError(f"unknown model kind {kind!r}; choose 'nf' or 'cnf'")


def with_tolerance(model: nn.Module, rtol: float, atol: float, trace: str = "exact"):
    """The same flow, solved at another tolerance (and trace): a fair evaluation."""
    if not isinstance(model, CNF):
        return model
    return CNF(model.func.field, T=model.T, trace=trace, rtol=rtol, atol=atol)


def fit_density_matching(job: dict) -> dict:
    """Train one model (job: kind, size, target, steps, batch, lr, seed, tol) on KL(q||p).

    Returns the losses, the final KL from `n_eval` fresh samples (solved at 1e-5),
    `n_hist` samples for the density plot, the seconds it took, and the weights.
    """
    torch.manual_seed(job["seed"])
    energy = ENERGIES[job["target"]]
    model = make_model(job["kind"], job["size"], rtol=job["tol"], atol=job["tol"])
    start = time.perf_counter()
    losses = train_density_matching(model, energy, job["steps"], job["batch"], job["lr"])
    seconds = time.perf_counter() - start
    evaluator = with_tolerance(model, 1e-5, 1e-5)
    torch.manual_seed(10_000 + job["seed"])
    log_z = energy_normalizer(energy)
    with torch.no_grad():
        kl = float(kl_loss(evaluator, energy, job["n_eval"], log_z))
        samples = evaluator.sample(job["n_hist"])[0]
    return dict(kind=job["kind"], size=job["size"], target=job["target"], kl=kl,
                losses=np.array(losses) + log_z, samples=samples, seconds=seconds,
                state=model.state_dict())


def fit_max_likelihood(job: dict) -> dict:
    """Train one model (job: kind, size, data, trace, steps, batch, lr, seed, tol) by NLL.

    The training set is drawn from `data` with seed 0 (`n_train` points). Returns the
    history (loss, NFE), the seconds it took and the weights.
    """
    torch.manual_seed(job["seed"])
    data = make_data(job["data"], job["n_train"], seed=0)
    model = make_model(job["kind"], job["size"], trace=job.get("trace", "exact"),
                       rtol=job["tol"], atol=job["tol"])
    start = time.perf_counter()
    hist = train_max_likelihood(model, data, job["steps"], job["batch"], job["lr"], job["seed"])
    return dict(job, hist=hist, seconds=time.perf_counter() - start,
                state=model.state_dict())


def load_model(result: dict) -> nn.Module:
    """The trained model of a `fit_*` result (exact trace, solved at 1e-5)."""
    model = make_model(result["kind"], result["size"])
    model.load_state_dict(result["state"])
    return model
