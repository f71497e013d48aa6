"""Regularised CNFs (Finlay et al., "How to train your neural ODE", ICML 2020): the
flow's kinetic energy and the Frobenius norm of its Jacobian, integrated along each
trajectory and added to the loss, so that training prefers fields that are cheap to
solve. Notebook 07 measures what they save.

The state grows by two columns, (z, log p, kinetic, Frobenius), with
d/dt [kinetic, Frobenius] = [|f|^2, |df/dz|_F^2]. In 2-D the D autograd passes
that give the exact trace give the whole Jacobian too, so both terms are exact;
in high dimension Finlay et al. estimate the Frobenius term with one probe, as
Hutchinson's trace estimator does.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from .flows import CNF, CNFODEF, PlanarField
from .targets import make_data, standard_normal_logprob
from .training import _lr_at

__all__ = ["trace_and_frobenius", "RegularisedODEF", "RegularisedCNF", "train_regularised",
           "fit_regularised"]


def trace_and_frobenius(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """tr(df/dz) and |df/dz|_F^2 for each sample, from the Jacobian row by row (one
    autograd pass a dimension, keeping the graph so that both can be trained on)."""
    tr = torch.zeros_like(fz[:, 0])
    frob = torch.zeros_like(fz[:, 0])
    for i in range(z.shape[1]):  # row i of the Jacobian
        row = torch.autograd.grad(fz[:, i].sum(), z, create_graph=True)[0]
        tr = tr + row[:, i]
        frob = frob + (row * row).sum(1)
    return tr, frob


class RegularisedODEF(CNFODEF):
    """d[z, log p, E, F]/dt = [f, -tr(df/dz), |f|^2, |df/dz|_F^2] (exact, row by row)."""

    def forward(self, state: Tensor, t: Tensor) -> Tensor:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not state.requires_grad:
                state = state.detach().requires_grad_(True)
            z = state[:, :-3]
            fz = self.field(z, t)
            tr, frob = trace_and_frobenius(fz, z)
        out = torch.cat([fz, -tr[:, None], (fz * fz).sum(1, keepdim=True), frob[:, None]], 1)
        return out if create_graph else out.detach()


class RegularisedCNF(CNF):
    """A `CNF` whose data-to-noise solve also integrates the two regularisers."""

    def __init__(self, field: nn.Module, **kwargs):
        super().__init__(field, **kwargs)
        self.func = RegularisedODEF(field)
        self.ode.func = self.func

    def log_prob_and_regularisers(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x), and the kinetic energy and Jacobian norm integrated over [0, T]."""
        zeros = x.new_zeros(len(x), 3)
        out = self.ode(torch.cat([x, zeros], 1), self._times(self.T, 0.0, x))
        z0, delta = out[:, :-3], out[:, -3]
        # integrated from T back to 0, the integrals come out negated
        return standard_normal_logprob(z0) - delta, -out[:, -2], -out[:, -1]


def train_regularised(model: RegularisedCNF, data: Tensor, steps: int, lam: float,
                      batch: int = 256, lr: float = 1e-2, seed: int = 0) -> dict[str, list]:
    """Adam on NLL + lam (kinetic + Frobenius), the schedule and clipping of notebook 05's
    maximum likelihood; per step the NLL, the regularisers and the forward/backward NFE."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list] = {"loss": [], "kinetic": [], "frobenius": [], "nfe_f": [],
                             "nfe_b": []}
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        logp, kinetic, frob = model.log_prob_and_regularisers(x)
        nll = -logp.mean()
        loss = nll + lam * (kinetic.mean() + frob.mean())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        hist["loss"].append(float(nll.detach()))
        hist["kinetic"].append(float(kinetic.mean().detach()))
        hist["frobenius"].append(float(frob.mean().detach()))
        hist["nfe_f"].append(model.ode.nfe_forward)
        hist["nfe_b"].append(model.ode.nfe_backward)
    return hist


def fit_regularised(job: dict) -> dict:
    """Train the paper's CNF (job: size, data, lam, steps, batch, lr, seed, tol, n_train)
    by maximum likelihood plus lam times the regularisers; the history, seconds and
    weights (which `cnf.load_model` reads: the field is the same)."""
    torch.manual_seed(job["seed"])
    data = make_data(job["data"], job["n_train"], seed=0)
    model = RegularisedCNF(PlanarField(2, job["size"]), rtol=job["tol"], atol=job["tol"])
    start = time.perf_counter()
    hist = train_regularised(model, data, job["steps"], job["lam"], job["batch"], job["lr"],
                             job["seed"])
    return dict(job, kind="cnf", hist=hist, seconds=time.perf_counter() - start,
                state=model.state_dict())
