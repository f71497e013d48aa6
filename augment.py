"""augment: what notebook 06 needs beyond odecore: the maps a Neural ODE cannot
represent, the augmented Neural ODE that can, and a ResNet for contrast.

The flow of dz/dt = f(z, t) with f Lipschitz is a homeomorphism: trajectories
cannot cross, so the map x(0) -> x(T) keeps the input space's topology. Two
tasks make that concrete (Dupont, Doucet & Teh, "Augmented Neural ODEs",
NeurIPS 2019):

* `reflection_data`: g(x) = -x in one dimension. A one-dimensional flow keeps
  order (x < y implies phi(x) < phi(y)), so it cannot reverse the line; the
  best increasing map to a decreasing target is a constant (`reflection_bound`).
* `annuli_data`: a disc inside an annulus, two classes. A flow of the plane
  cannot move the disc out of the annulus, so no line after it separates them.

`FlowModel` is a Neural ODE with `augment` extra zero coordinates (0: the
plain model; p > 0: Dupont's ANODE), read out linearly from the flowed state;
`ResNetModel` takes the same field's form in finite residual steps, whose map
need not be invertible. `fit` trains either and records the loss and, for a
flow, the forward NFE of every iteration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from odecore import NNODEF, NeuralODE

__all__ = ["reflection_data", "reflection_bound", "annuli_data", "Readout", "FlowModel",
           "ResNetModel", "fit", "accuracy"]


# ---------------------------------------------------------------------------
# The two tasks
# ---------------------------------------------------------------------------
def reflection_data(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """x uniform on [-1, 1], `(n, 1)`, and the target g(x) = -x."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n, 1, generator=g) - 1
    return x, -x


def reflection_bound(x: Tensor) -> float:
    """The least mean squared error any increasing map can reach on g(x) = -x.

    A one-dimensional flow is increasing. The best increasing fit to a
    decreasing target is a constant (isotonic regression pools every point),
    the target's mean, so the error is at least the target's variance: 1/3 for
    x uniform on [-1, 1]. Computed on the sample itself, so it is the bound for
    exactly these points.
    """
    return float(x.var(unbiased=False))


def annuli_data(n: int, seed: int = 0, r_in: float = 0.5, r_out: tuple = (1.0, 1.5)
                ) -> tuple[Tensor, Tensor]:
    """Half the points in the disc r < r_in (class 0), half in the annulus
    r_out[0] < r < r_out[1] (class 1), uniform over each region's area."""
    g = torch.Generator().manual_seed(seed)
    n_in = n // 2
    theta = 2 * math.pi * torch.rand(n, generator=g)
    u = torch.rand(n, generator=g)
    r = torch.empty(n)
    r[:n_in] = r_in * u[:n_in].sqrt()
    a, b = r_out
    r[n_in:] = (a * a + (b * b - a * a) * u[n_in:]).sqrt()
    x = torch.stack((r * theta.cos(), r * theta.sin()), dim=1)
    y = torch.cat((torch.zeros(n_in), torch.ones(n - n_in))).long()
    perm = torch.randperm(n, generator=g)
    return x[perm], y[perm]


# ---------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------
class Readout(nn.Module):
    """A state's `out` outputs: a linear layer ("linear", for classification) or its
    first `out` coordinates ("project": for g(x) = -x, where a linear layer could flip
    the sign itself and hide what the map before it cannot do)."""

    def __init__(self, dim: int, out: int, kind: str = "linear"):
        super().__init__()
        if kind not in ("linear", "project"):
            raise ValueError(f"readout must be 'linear' or 'project', got {kind!r}")
        if kind == "project" and out > dim:
            raise ValueError(f"cannot project {out} outputs from a {dim}-d state")
        self.out = out
        self.linear = nn.Linear(dim, out) if kind == "linear" else None

    def forward(self, z: Tensor) -> Tensor:
        return z[:, :self.out] if self.linear is None else self.linear(z)


class FlowModel(nn.Module):
    """x -> [x, 0 (augment of them)] -> flow for t in [0, 1] -> readout.

    With `augment` = 0 this is a plain Neural ODE on the input space; with
    p > 0 the flow runs in d + p dimensions, where trajectories can pass each
    other (Dupont et al.'s ANODE). The field is `odecore.NNODEF`, solved by
    dopri5 with the adjoint; `nfe_forward` is the last forward pass's count.
    `readout`: see `Readout`.
    """

    def __init__(self, dim: int, out: int, augment: int = 0, hidden: int = 32,
                 readout: str = "linear", rtol: float = 1e-3, atol: float = 1e-4):
        super().__init__()
        self.augment = augment
        self.ode = NeuralODE(NNODEF(dim + augment, hidden, time_invariant=True),
                             method="dopri5", rtol=rtol, atol=atol)
        self.readout = Readout(dim + augment, out, readout)

    def flow(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """The flowed state (at the times `t`, `(T, n, d + p)`, or at t = 1)."""
        z0 = torch.cat((x, x.new_zeros(x.shape[0], self.augment)), dim=1)
        if t is None:
            return self.ode(z0)
        return self.ode(z0, t, return_whole_sequence=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.flow(x))

    @property
    def nfe_forward(self) -> int:
        return self.ode.nfe_forward


class ResNetModel(nn.Module):
    """The same field's form in `steps` residual steps h <- h + f_k(h) / steps, each step
    its own weights, then the readout (as `FlowModel`'s): a finite composition of
    maps that need not be invertible, so it is not bound by the flows' topology."""

    def __init__(self, dim: int, out: int, steps: int = 10, hidden: int = 32,
                 readout: str = "linear"):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                          nn.Linear(hidden, dim)) for _ in range(steps))
        self.readout = Readout(dim, out, readout)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = x + block(x) / len(self.blocks)
        return self.readout(x)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def fit(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
        iters: int, lr: float = 1e-2, batch: int = 128, seed: int = 0) -> dict:
    """Adam on mini-batches; per iteration the loss and, for a `FlowModel`, its forward
    NFE (the cost of a forward pass, which a flow that must squeeze its way
    around the topology pays in steps)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist: dict = {"loss": [], "nfe": []}
    start = time.perf_counter()
    model.train()
    for _ in range(iters):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist["loss"].append(float(loss.detach()))
        hist["nfe"].append(getattr(model, "nfe_forward", 0))
    hist["seconds"] = time.perf_counter() - start
    model.eval()
    return hist


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The share of points whose largest logit is their class."""
    return float((model(x).argmax(1) == y).float().mean())
