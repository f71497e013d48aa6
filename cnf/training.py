"""Training, evaluation and the notebook's experiments: the losses and loops, held-out
NLL, Hutchinson's probes, support coverage, one fit per job, and each budget's settings."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from nbutils import for_budget

from .flows import CNF, PlanarField, PlanarFlow
from .targets import ENERGIES, energy_normalizer, make_data

__all__ = [
    "Settings", "settings", "kl_loss", "train_density_matching", "train_max_likelihood", "nll",
    "log_probs", "nll_gap", "support_fraction", "make_model", "with_tolerance",
    "fit_density_matching", "fit_max_likelihood", "load_model",
]


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
    """smoke: everything once, in seconds; quick: the committed run; full: 2,000
    steps a fit (the paper's 10,000 would take this CPU hours: the NFE grows with
    training) and the paper's scale of data and evaluation."""
    table = {
        "smoke": Settings(dm_steps=15, dm_sizes=(2, 8), ml_steps=10, n_train=2000, n_test=500,
                          hist=2000, grid=40, dims=(2, 8), probes=500, gif_frames=4),
        "quick": Settings(),
        "full": Settings(dm_steps=2000, ml_steps=2000, n_train=100000, n_test=20000,
                         hist=50000, grid=160, probes=100000, gif_frames=40),
    }
    return for_budget(table, budget)


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
def log_probs(model, x: Tensor, chunk: int = 2048) -> Tensor:
    """Each held-out point's log-density, in chunks: one solve serves both an NLL and a
    paired gap (`nll_gap`)."""
    return torch.cat([model.log_prob(c) for c in x.split(chunk)])


def nll(model, x: Tensor, chunk: int = 2048) -> float:
    """Mean negative log-likelihood (nats per point) of held-out data."""
    return float(-log_probs(model, x, chunk).mean())


def nll_gap(logp_a: Tensor, logp_b: Tensor) -> tuple[float, float]:
    """Model a's NLL minus model b's from their `log_probs` on the same points, and the
    standard error of that mean: whether two held-out NLLs differ by more than the test
    set's noise."""
    d = logp_b - logp_a
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def support_fraction(samples: Tensor, reference: Tensor, calibration: Tensor,
                     quantile: float = 0.95) -> tuple[float, float]:
    """Share of samples within radius r of some reference point, and r.

    r is the `quantile` of the calibration points' distances to their nearest reference
    point: held-out data itself scores `quantile`, a model that misses the data scores less.
    """
    r = float(torch.quantile(torch.cdist(calibration, reference).min(1).values, quantile))
    d = torch.cdist(samples, reference).min(1).values
    return float((d <= r).float().mean()), r


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
