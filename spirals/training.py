"""Training, the same for both models: batches, loss, schedule, budgets, the ablation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from nbutils import for_budget, get_device, progress
from odecore import NeuralODE

from .batches import Batch, gather_time, sample_batch, training_targets
from .data import SpiralData
from .evaluation import score
from .models import MODELS, ModelConfig, elbo_loss

__all__ = [
    "TrainConfig", "train_config", "train_model", "ablation_settings", "new_model",
    "train_new", "train_job",
]


@dataclass
class TrainConfig:
    """How long and how to train; the same for both models. `train_config` gives each budget's."""

    iters: int = 3000
    batch_size: int = 100
    lr: float = 1e-2
    lr_final: float = 0.02     # the cosine schedule ends at this fraction of lr
    n_obs: tuple = (30, 50, 100)
    window: int = 100
    grad_clip: float = 10.0
    kl_warmup: int = 0         # iterations over which the KL weight rises from 0 to 1
    noise_std: float | None = None  # the likelihood's sigma (default: the data's)
    horizon: int = 0           # points after each window that the loss scores too
    max_abs: float | None = None  # leave out training samples whose |x| exceeds this
    warm_method: str | None = None  # a cheaper solver for the first `warm_frac` of training
    warm_frac: float = 0.8
    seed: int = 0
    frame_every: int = 0


def train_config(budget: str, dataset: str = "paper") -> TrainConfig:
    """Each budget's training settings, for the paper's or the post's spirals.

    smoke: a few iterations, to check that everything runs; quick: about 2 to 3
    minutes a model on one core of the project's CPU; full: four times quick,
    six on the post's spirals (whose error is still falling steeply at four).
    The latent ODE trains with one Euler step per grid interval for the first
    80% of the iterations, then with its own solver, RK4 (`warm_method`):
    Euler's steps are a quarter of the cost, but a model trained on them to
    the end learns to lean on their bias, and an accurate solver no longer
    reproduces its predictions.
    Both datasets score the 100 points after each training window (`horizon`);
    the post's leave out the training spirals whose transients pass |x| = 10
    (`max_abs`: 7 of 800, which hold much of the squared signal and so
    drive the gradients at a noise of 0.02; the largest held-out |x| is 8.8).
    """
    n = for_budget({"smoke": 10, "quick": 1500, "full": 6000}, budget)
    if dataset not in ("paper", "post"):
        raise ValueError(f"unknown dataset {dataset!r}; use paper or post")
    n = 9000 if (budget, dataset) == ("full", "post") else n
    return TrainConfig(iters=n, kl_warmup=n // 5, frame_every=max(5, n // 20), horizon=100,
                       max_abs=10.0 if dataset == "post" else None, warm_method="euler")


def _cosine(optim, iters: int, final: float):
    cos = lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iters) / iters))
    return torch.optim.lr_scheduler.LambdaLR(optim, lambda i: final + (1 - final) * cos(i))


def train_model(model: nn.Module, data: SpiralData, cfg: TrainConfig,
                callback: Callable | None = None, desc: str | None = None,
                monitor: Batch | None = None) -> dict:
    """Train either model on random windows; returns the history.

    Each batch observes k of each window's points (k drawn from `cfg.n_obs`),
    the encoder reads those, the decoder predicts the window's grid and the
    `cfg.horizon` points after it, and the loss scores the observed points and
    those after the window (`training_targets`). Training samples whose |x|
    passes `cfg.max_abs` are left out. A latent ODE solves with
    `cfg.warm_method` for the first `cfg.warm_frac` of the iterations, then
    with its own solver. Batches come from `cfg.seed` alone, so both models see
    the very same batches in the same order.
    `callback(i, model)` runs every `cfg.frame_every` iterations; so does the
    extrapolation RMSE on the held-out `monitor` batch, when given (the
    history's "monitor": a list of (iteration, RMSE)), to show whether a
    longer schedule would still help. With `desc`, a progress bar.
    """
    dev = next(model.parameters()).device
    if cfg.max_abs is not None:
        data = data.subset(data.x[:data.train_points].abs().amax((0, 2)) <= cfg.max_abs)
    data = data.to(dev)
    sigma = cfg.noise_std or data.noise_std
    g = torch.Generator().manual_seed(cfg.seed)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = _cosine(optim, cfg.iters, cfg.lr_final)
    hist: dict = {"loss": [], "k": [], "time": [], "monitor": []}
    start = time.perf_counter()
    own = getattr(model, "ode", None)
    warm = int(cfg.warm_frac * cfg.iters) if cfg.warm_method and own is not None else 0
    if warm:
        model.ode = NeuralODE(own.func, method=cfg.warm_method, h_max=model.cfg.h_max,
                              adjoint=False)
    try:
        model.train()
        for i in progress(range(cfg.iters), desc=desc, disable=desc is None, mininterval=10.0):
            if warm and i == warm:
                model.ode = own  # the model's own solver from here on
            k = cfg.n_obs[int(torch.randint(len(cfg.n_obs), (1,), generator=g))]
            b = sample_batch(data, cfg.batch_size, k, cfg.window, g, cfg.horizon)
            x_p, kl = model(b.x_obs, b.t_obs, b.t_grid)
            w = min(1.0, (i + 1) / cfg.kl_warmup) if cfg.kl_warmup else 1.0
            pos = training_targets(b, cfg.horizon)
            loss = elbo_loss(gather_time(b.x_grid, pos), gather_time(x_p, pos), kl, sigma, w)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{model.kind}: the loss is {loss.item()} at iteration {i}")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optim.step()
            sched.step()
            hist["loss"].append(loss.item())
            hist["k"].append(k)
            hist["time"].append(time.perf_counter() - start)
            if cfg.frame_every and (i % cfg.frame_every == 0 or i == cfg.iters - 1):
                model.eval()
                if callback is not None:
                    callback(i, model)
                if monitor is not None:
                    with torch.no_grad():
                        pred = model.predict(monitor.x_obs, monitor.t_obs, monitor.t_grid)
                    hist["monitor"].append((i + 1, score(pred, monitor)["extrapolation"]))
                model.train()
    finally:
        if own is not None:
            model.ode = own
    model.eval()
    return hist


def ablation_settings(cfg: TrainConfig, mcfg: ModelConfig, iters: int
                      ) -> dict[str, tuple[TrainConfig, ModelConfig]]:
    """The recipe and one change at a time, each for `iters` iterations.

    Notebook 03 trains a latent ODE for each row; the recipe row is the
    reference the others are read against. (What longer training buys, the
    notebook shows by scoring held-out windows while training.)
    """
    base = replace(cfg, iters=iters, kl_warmup=iters // 5, frame_every=0)
    paper = ModelConfig.paper()
    return {
        "the recipe": (base, mcfg),
        "no horizon loss (the observed points only)": (replace(base, horizon=0), mcfg),
        "the paper's sizes (latent 4, 20 units)": (base, replace(
            mcfg, latent_dim=paper.latent_dim, ode_hidden=paper.ode_hidden,
            dec_hidden=paper.dec_hidden)),
        "learning rate 3e-3 (the post's)": (replace(base, lr=3e-3), mcfg),
        "no KL annealing": (replace(base, kl_warmup=0), mcfg),
        "likelihood sigma 0.03 (a tenth of the noise)": (replace(base, noise_std=0.03), mcfg),
        "Euler to the end (no RK4 finish)": (base, replace(mcfg, method="euler")),
    }


def new_model(kind: str, mcfg: ModelConfig, seed: int, device=None) -> nn.Module:
    """A fresh model of `kind` ("Latent ODE" or "RNN"), initialised from `seed` alone."""
    torch.manual_seed(seed)
    return MODELS[kind](mcfg).to(device or get_device())


def train_new(kind: str, mcfg: ModelConfig, data: SpiralData, cfg: TrainConfig,
              seed: int = 0, device=None, monitor: Batch | None = None,
              callback: Callable | None = None, desc: str | None = None
              ) -> tuple[nn.Module, dict]:
    """`new_model` then `train_model`."""
    model = new_model(kind, mcfg, seed, device)
    hist = train_model(model, data, cfg, callback=callback, desc=desc, monitor=monitor)
    return model, hist


def train_job(job: tuple) -> tuple[nn.Module, dict]:
    """`train_new(*job)`: one job for `workers.run` and `workers.submit`, which take one
    argument a job (kind, model config, data, train config, seed, device[, monitor])."""
    return train_new(*job)
