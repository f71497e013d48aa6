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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mnist  # notebook 02's data, stem and head
import nbutils
from odecore import NNODEF, ConvODEF, NeuralODE

__all__ = ["DUPONT_MNIST", "Settings", "settings", "reflection_data", "reflection_bound",
           "annuli_data", "Readout", "FlowModel", "ResNetModel", "fit", "accuracy", "build",
           "train_toy", "AugmentedMNIST", "train_mnist"]


# Dupont et al.'s Table 1, MNIST: test accuracy (%) over five runs. Their ODEs act on the
# image itself (1 x 28 x 28; the field 1x1, 3x3, 1x1 convolutions fed the time), about
# 84,000 parameters each; dopri5 to 1e-3, the adjoint, Adam at 1e-3, batches of 256.
DUPONT_MNIST = {
    "NODE (92 filters)": dict(parameters="about 84k", accuracy=96.4, std=0.5),
    "ANODE (64 filters, 5 extra channels)": dict(parameters="about 84k", accuracy=98.2, std=0.1),
}


@dataclass(frozen=True)
class Settings:
    """One budget of notebook 06: the toy tasks' data and training lengths, the seeds
    of the annuli's flows, and the MNIST comparison's length and test set."""

    n_reflection: int = 256
    reflection_iters: int = 400
    n_annuli: int = 3000
    n_annuli_test: int = 2000
    annuli_iters: int = 4500
    annuli_seeds: tuple[int, ...] = (0, 1)
    mnist_iters: int = 200
    mnist_train: int = 60000
    mnist_test: int = 10000
    gif_frames: int = 24


def settings(budget: str) -> Settings:
    """smoke: a few iterations of everything (under a minute); quick: the notebook in
    about 8 minutes on 2 CPU cores; full: longer training of every model."""
    table = {
        "smoke": Settings(n_reflection=64, reflection_iters=20, n_annuli=256,
                          n_annuli_test=256, annuli_iters=20, annuli_seeds=(0,),
                          mnist_iters=3, mnist_train=512, mnist_test=256, gif_frames=4),
        "quick": Settings(),
        "full": Settings(annuli_iters=9000, annuli_seeds=(0, 1, 2, 3), mnist_iters=3000),
    }
    return nbutils.for_budget(table, budget)


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
    other (Dupont et al.'s ANODE). The field is `odecore.NNODEF`, fed the time
    as Dupont et al.'s is, solved by dopri5 with the adjoint; `nfe_forward` is
    the last forward pass's count.
    `readout`: see `Readout`.
    """

    def __init__(self, dim: int, out: int, augment: int = 0, hidden: int = 32,
                 readout: str = "linear", rtol: float = 1e-3, atol: float = 1e-4,
                 time_invariant: bool = False):
        super().__init__()
        self.augment = augment
        self.ode = NeuralODE(NNODEF(dim + augment, hidden, time_invariant=time_invariant),
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

    def states(self, x: Tensor) -> list[Tensor]:
        """The hidden state before the first step and after each."""
        out = [x]
        for block in self.blocks:
            out.append(out[-1] + block(out[-1]) / len(self.blocks))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.states(x)[-1])


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


# ---------------------------------------------------------------------------
# The notebook's runs, one job a model (for `workers.run`)
# ---------------------------------------------------------------------------
def build(job: dict) -> nn.Module:
    """The model a toy job names: `kind` "node", "anode" (with `augment`) or "resnet"."""
    dim, out, readout = (1, 1, "project") if job["task"] == "reflection" else (2, 2, "linear")
    torch.manual_seed(job.get("seed", 0))
    if job["kind"] == "resnet":
        return ResNetModel(dim, out, steps=job.get("steps", 4), readout=readout)
    augment = job.get("augment", 1) if job["kind"] == "anode" else 0
    return FlowModel(dim, out, augment=augment, readout=readout)


def _toy_data(job: dict, test: bool = False) -> tuple[Tensor, Tensor]:
    seed = job.get("seed", 0) + (1000 if test else 0)
    if job["task"] == "reflection":
        return reflection_data(job["n"], seed=seed)
    return annuli_data(job["n_test"] if test else job["n"], seed=seed)


def train_toy(job: dict) -> dict:
    """Train `build(job)` on its task; return its weights, loss and NFE per iteration,
    and its score: the mean squared error on the training points (g(x) = -x: the
    bound is for those very points) or the held-out accuracy (annuli)."""
    model = build(job)
    x, y = _toy_data(job)
    loss_fn = F.mse_loss if job["task"] == "reflection" else F.cross_entropy
    hist = fit(model, x, y, loss_fn, iters=job["iters"], lr=job["lr"], batch=job["batch"],
               seed=job.get("seed", 0))
    with torch.no_grad():
        if job["task"] == "reflection":
            score = float(F.mse_loss(model(x), y))
        else:
            score = accuracy(model, *_toy_data(job, test=True))
    return dict(job=job, state=model.state_dict(), score=score, **hist)


class AugmentedMNIST(nn.Module):
    """Notebook 02's ODE-Net with `augment` of the ODE's 64 channels starting at zero.

    The stem gives 64 - p feature maps, p zero channels join them, and the same
    `ConvODEF(64)` flows the 64 channels: the ODE, its cost per evaluation and the
    head are those of p = 0, and only the stem's last layer is smaller. Solved by
    dopri5 to Dupont et al.'s tolerance (1e-3), gradients by the adjoint.
    """

    def __init__(self, augment: int = 0, tol: float = 1e-3):
        super().__init__()
        self.augment = augment
        ode = NeuralODE(ConvODEF(64), method="dopri5", rtol=tol, atol=tol)
        self.net = mnist.ContinuousNeuralMNISTClassifier(ode)
        if augment:
            self.net.downsampling[-1] = nn.Conv2d(64, 64 - augment, 4, 2, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        h = self.net.downsampling(x.contiguous(memory_format=torch.channels_last))
        h = torch.cat((h, h.new_zeros(h.shape[0], self.augment, *h.shape[2:])), dim=1)
        return self.net.head(self.net.feature(h))

    @property
    def nfe(self) -> tuple[int, int]:
        """The last pass's (forward, backward) evaluations of the dynamics."""
        return self.net.feature.nfe_forward, self.net.feature.nfe_backward


def train_mnist(job: dict) -> dict:
    """Adam at 1e-3 (Dupont et al.'s rate) on batches of 64, on notebook 02's one-cycle
    schedule, so that a short run ends settled; per iteration the loss, the forward and
    backward NFE and the seconds; then the test accuracy."""
    torch.manual_seed(job.get("seed", 0))
    model = AugmentedMNIST(job["augment"])
    X, Y = mnist.load_mnist(True, job["n_train"])
    Xt, Yt = mnist.load_mnist(False, job["n_test"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=job["iters"])
    hist: dict = {"loss": [], "nfe": [], "nfe_backward": [], "seconds": []}
    model.train()
    for idx in mnist.batches(len(X), 64, job["iters"], job.get("seed", 0)):
        start = time.perf_counter()
        loss = F.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist["seconds"].append(time.perf_counter() - start)
        hist["loss"].append(float(loss.detach()))
        forward, backward = model.nfe
        hist["nfe"].append(forward)
        hist["nfe_backward"].append(backward)
    accuracy_ = mnist.test_accuracy(model, Xt, Yt, batch=500)
    return dict(job=job, params=nbutils.n_parameters(model), accuracy=accuracy_, **hist)
