"""The authors' latent ODE example, trained as published, scored on this project's Table 2 protocol.

    make bench-example    # installs torchdiffeq (a development dependency) and runs this

Why: notebook 03 compares this project's latent ODE with Table 2 of Chen et al.
(2018). The paper's reference code for Section 5.1 is torchdiffeq's
`examples/latent_ode.py`; this script rebuilds it from its published
description (our own code) and trains it exactly as published, so that the
authors' own recipe gets the same held-out scores as our models and the
comparison does not rest on our reading of the paper alone.

As published: latent dimension 4; a plain tanh RNN (hidden 25, no time input)
reads each window backwards for q(z0); dz/dt = MLP(4-20-20-4, ELU),
time-invariant; decoder MLP(4-20-2, ReLU); Adam lr 0.01 for 2000 iterations,
every iteration the whole training set as one batch; torchdiffeq's `odeint`
with its defaults (dopri5, rtol 1e-7, atol 1e-9), backpropagating through the
solver (no adjoint); loss = the negative ELBO with noise std 0.3, summed over
points and coordinates, averaged over windows. No schedule, clipping or KL
annealing.

One departure: the example trains on all 1000 windows it generates, and
nothing is held out. We train it on 800 windows of 100 points drawn as its
generator draws them (starts 100 to 400 of 500, so that they reach the end of
the spirals; `PaperSpiralConfig(horizon=0, seed=1)`, noise of its own seed),
and score it on the project's 200 held-out windows, which it never sees. (The
project's own training windows start at 100 to 300, to keep 100 points after
each for their loss; the example's loss has no use for those, and windows that
stop at point 400 would leave it nothing to learn the held-out windows' last
100 points from.) The record notes where the training windows start
(`settings["train_windows"]`).

Scoring: `spirals.evaluate` observes k = 30, 50, 100 of each held-out window's
first 100 points irregularly, and scores interpolation and the 100 points
after the last observation against the noise-free truth. The example's RNN
reads only the observations, not their times, as published. k = 100 is also
the example's own reading (every point, in order). The record goes to
`results/03_latent_ode_vae-authors_example.json` (`--out DIR` to write it in DIR instead).
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torchdiffeq
from torch import Tensor, nn

import nbutils
import spirals as S

# The published settings (torchdiffeq's examples/latent_ode.py, its defaults).
LATENT_DIM = 4
OBS_DIM = 2
RNN_HIDDEN = 25
ODE_HIDDEN = 20
DEC_HIDDEN = 20
NOISE_STD = 0.3
LR = 0.01
ITERS = 2000
KIND = "authors' example"


class RecognitionRNN(nn.Module):
    """q(z0 | x): a plain tanh RNN cell; the last output is mean and log-variance.

    As published it takes no time input, so irregular observations look to it
    like regular ones.
    """

    def __init__(self, latent_dim: int = LATENT_DIM, obs_dim: int = OBS_DIM,
                 hidden: int = RNN_HIDDEN):
        super().__init__()
        self.hidden = hidden
        self.i2h = nn.Linear(obs_dim + hidden, hidden)
        self.h2o = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Read `x` `(T, b, obs)` from last to first; mean and log-variance `(b, latent)`."""
        h = x.new_zeros(x.shape[1], self.hidden)
        for i in reversed(range(x.shape[0])):
            h = torch.tanh(self.i2h(torch.cat([x[i], h], -1)))
            out = self.h2o(h)
        mean, log_var = out.chunk(2, -1)
        return mean, log_var


class LatentODEFunc(nn.Module):
    """dz/dt = f(z): two hidden layers of 20 ELUs, time-invariant; counts its evaluations."""

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = ODE_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(),
                                 nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, latent_dim))
        self.nfe = 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        self.nfe += 1
        return self.net(z)


class AuthorsExample(nn.Module):
    """The example's three networks, and the protocol's interface (`predict`, `code`)."""

    kind = KIND

    def __init__(self):
        super().__init__()
        # built in the example's order, so one seed fixes the same initial weights
        self.func = LatentODEFunc()
        self.rec = RecognitionRNN()
        self.dec = nn.Sequential(nn.Linear(LATENT_DIM, DEC_HIDDEN), nn.ReLU(),
                                 nn.Linear(DEC_HIDDEN, OBS_DIM))

    def decode(self, z0: Tensor, t: Tensor) -> Tensor:
        """x(t) `(T, b, obs)` from z0 `(b, latent)` at t[0], `t` `(T,)` shared by all."""
        return self.dec(torchdiffeq.odeint(self.func, z0, t))

    @torch.no_grad()
    def predict(self, x_obs: Tensor, t_obs: Tensor, t_grid: Tensor) -> Tensor:
        """Decode the posterior mean of z0 on `t_grid` `(G, b, 1)`; `t_obs` is not read.

        The example solves on one grid for the whole batch, so every window
        must share it (the protocol's held-out windows all start at 0).
        """
        t = t_grid[:, 0, 0]
        if not torch.equal(t_grid, t[:, None, None].expand_as(t_grid)):
            raise ValueError("the authors' example solves on one grid: the windows' grids differ")
        return self.decode(self.rec(x_obs)[0], t)

    @torch.no_grad()
    def code(self, x_obs: Tensor, t_obs: Tensor) -> Tensor:
        """z0's posterior mean `(b, latent)`; `t_obs` is not read."""
        return self.rec(x_obs)[0]


def log_normal_pdf(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x | mean, exp(log_var)), elementwise, with its constant."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 / log_var.exp())


def kl_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over the latent dims: `(b,)`."""
    return 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).sum(-1)


def train(model: AuthorsExample, x: Tensor, t: Tensor, iters: int) -> dict:
    """The published loop: Adam, the whole training set every iteration, the plain ELBO.

    Stops with the iteration named if the loss stops being finite or the
    solver gives up (dopri5's step underflow), rather than changing settings.
    """
    optim = torch.optim.Adam(model.parameters(), lr=LR)
    noise_log_var = torch.full_like(x, 2.0 * math.log(NOISE_STD))
    curve, nfes = [], []
    start = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for i in range(1, iters + 1):
        optim.zero_grad()
        mean, log_var = model.rec(x)
        z0 = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        model.func.nfe = 0
        try:
            x_pred = model.decode(z0, t)
        except AssertionError as err:  # torchdiffeq asserts on dt underflow
            raise RuntimeError(f"the solver stopped at iteration {i}: {err}") from err
        nfes.append(model.func.nfe)
        log_px = log_normal_pdf(x, x_pred, noise_log_var).sum(-1).sum(0)
        loss = (-log_px + kl_standard_normal(mean, log_var)).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at iteration {i}")
        loss.backward()
        optim.step()
        if i % 100 == 0 or i == iters:
            elapsed = time.perf_counter() - start
            curve.append([i, loss.item()])
            print(f"iter {i:5d}  loss {loss.item():10.4f}  nfe {nfes[-1]:4d}  "
                  f"{elapsed:7.1f} s", flush=True)
    return {"seconds": time.perf_counter() - start, "final_loss": loss.item(),
            "nfe_per_iteration": sum(nfes) / len(nfes), "loss_curve": curve}


def subset(b: S.Batch, keep: Tensor) -> S.Batch:
    """The windows of batch `b` where `keep` `(b,)` is True."""
    return replace(b, t_grid=b.t_grid[:, keep], idx=b.idx[:, keep], x_obs=b.x_obs[:, keep],
                   t_obs=b.t_obs[:, keep], x_grid=b.x_grid[:, keep],
                   x_true=b.x_true[:, keep], sample=b.sample[keep])


def by_direction(b: S.Batch, pred: Tensor, ccw: Tensor) -> dict:
    """Extrapolation RMSE over clockwise and over counter-clockwise windows."""
    ccw = ccw[b.sample].bool()
    return {name: S.score(pred[:, keep], subset(b, keep))["extrapolation"]
            for name, keep in (("clockwise", ~ccw), ("counter-clockwise", ccw))}


def published_settings(seed: int, n_train: int) -> dict:
    """What was run, with the solver settings read from torchdiffeq itself."""
    defaults = inspect.signature(torchdiffeq.odeint).parameters
    return {
        "latent_dim": LATENT_DIM, "obs_dim": OBS_DIM, "rnn": f"tanh RNN cell, hidden "
        f"{RNN_HIDDEN}, backwards, no time input", "dynamics": f"MLP {LATENT_DIM}-{ODE_HIDDEN}-"
        f"{ODE_HIDDEN}-{LATENT_DIM}, ELU, time-invariant", "decoder": f"MLP {LATENT_DIM}-"
        f"{DEC_HIDDEN}-{OBS_DIM}, ReLU", "noise_std": NOISE_STD, "optimizer": "Adam",
        "lr": LR, "batch": f"all {n_train} training windows", "solver": "torchdiffeq.odeint",
        "method": defaults["method"].default or "dopri5", "rtol": defaults["rtol"].default,
        "atol": defaults["atol"].default, "adjoint": False, "seed": seed,
        "data": "spirals.PaperSpiralConfig(): 500 times on [0, 6 pi], a=0, b=0.3, noise 0.3, "
                "windows of 100",
    }


def train_windows(data: S.SpiralData, cfg: S.PaperSpiralConfig) -> dict:
    """Which training data this run saw (the published generator starts windows at 100..399)."""
    start = data.start
    return {"n": len(data), "points": data.x.shape[0],
            "start_min": None if start is None else int(start.min()),
            "start_max": None if start is None else int(start.max()),
            "spirals_cache_key": cfg.key()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=ITERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, type=Path,
                        help="a folder for the record instead of results/ (for smoke runs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, CPU kernels "
          f"{torch.backends.cpu.get_cpu_capability()}, 1 thread", flush=True)

    cfg = S.PaperSpiralConfig()
    _, test = S.load_spirals(cfg)  # the protocol's held-out windows
    example_cfg = replace(cfg, horizon=0, seed=1)  # the example's windows: starts 100..400
    train_data, _ = S.load_spirals(example_cfg)
    x, t = train_data.x, train_data.t
    print(f"training on {tuple(x.shape)} (T, windows, 2), t in [{t[0]:.3f}, {t[-1]:.3f}]; "
          f"held-out {tuple(test.x.shape)}", flush=True)
    torch.manual_seed(args.seed)
    model = AuthorsExample()
    trained = train(model, x, t, args.iters)

    model.eval()
    ev = S.evaluate({KIND: model}, test, references=("trivial",))
    rmse = {str(k): v for k, v in ev["rmse"].items()}
    b, preds = ev["batches"][100]
    numbers = {
        "rmse": rmse,
        "extrapolation_by_direction_k100": by_direction(b, preds[KIND], test.ccw),
        "iterations": args.iters,
        "seconds": trained["seconds"],
        "final_loss": trained["final_loss"],
        "nfe_per_iteration": trained["nfe_per_iteration"],
        "loss_curve": trained["loss_curve"],
        "torchdiffeq": torchdiffeq.__version__,
        "settings": {**published_settings(args.seed, len(train_data)),
                     "train_windows": train_windows(train_data, example_cfg)},
    }
    for k, row in rmse.items():
        for name, r in row.items():
            print(f"k={k:>3}  {name:17s}  interpolation {r['interpolation']:.4f}  "
                  f"extrapolation {r['extrapolation']:.4f}")
    print("k=100 extrapolation by direction:", numbers["extrapolation_by_direction_k100"])
    path = nbutils.save_record("03_latent_ode_vae", "authors_example", numbers, "cpu", args.out)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
