"""The models: planar flows (the discrete baseline), the fields f(z, t), the augmented
dynamics `CNFODEF` and the continuous normalizing flow `CNF`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odecore import ODEF, NeuralODE

from .targets import standard_normal_logprob

__all__ = [
    "PlanarFlow", "GaussianBaseline", "PlanarField", "MLPField", "hutchinson_probes",
    "trace_exact", "trace_hutchinson", "hutchinson_variance", "jacobian_rows", "CNFODEF", "CNF",
]


_SHIFT = math.log(math.e - 1)  # softplus(_SHIFT) = 1


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


def hutchinson_probes(shape: Sequence[int], kind: str = "rademacher",
                      dtype=torch.float32, device=None, generator=None) -> Tensor:
    """Probe vectors with E[eps eps^T] = I: Rademacher (+-1) or standard Gaussian."""
    if kind == "gaussian":
        return torch.randn(*shape, dtype=dtype, device=device, generator=generator)
    if kind != "rademacher":
        raise ValueError(f"unknown probe {kind!r}; choose 'rademacher' or 'gaussian'")
    bits = torch.randint(0, 2, tuple(shape), device=device, generator=generator)
    return (2 * bits - 1).to(dtype)


def trace_exact(fz: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """tr(df/dz) per sample by D vector-Jacobian products (one per coordinate)."""
    tr = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        last = i == z.shape[1] - 1
        g = torch.autograd.grad(fz[:, i].sum(), z, create_graph=create_graph,
                                retain_graph=create_graph or not last)[0]
        tr = tr + g[:, i]
    return tr


def hutchinson_variance(J: Tensor, kind: str = "rademacher") -> Tensor:
    """Var[eps^T J eps] of a one-probe estimate, per sample, for Jacobians `J` (N, D, D).

    With E[eps eps^T] = I, Var = sum over pairs i != j of (J_ij + J_ji)^2 / 2 + the
    diagonal's share: Gaussian probes give |J|_F^2 + tr(J J); Rademacher probes
    (eps_i^2 = 1, so the diagonal is exact) give that minus 2 sum_i J_ii^2.
    """
    frob2 = J.square().sum((1, 2))
    tr_jj = torch.einsum("nij,nji->n", J, J)
    if kind == "gaussian":
        return frob2 + tr_jj
    if kind != "rademacher":
        raise ValueError(f"unknown probe {kind!r}; choose 'rademacher' or 'gaussian'")
    return frob2 + tr_jj - 2 * torch.diagonal(J, dim1=1, dim2=2).square().sum(1)


def jacobian_rows(fz: Tensor, z: Tensor) -> Tensor:
    """df/dz per sample, (N, D, D), by D vector-Jacobian products (no graph kept)."""
    rows = [torch.autograd.grad(fz[:, i].sum(), z, retain_graph=True)[0]
            for i in range(z.shape[1])]
    return torch.stack(rows, 1)


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
