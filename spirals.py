"""spirals: the spiral data, the ODE-VAE, the RNN baseline and their training.

Shared by notebooks 03 (train and measure) and 04 (walk the latent space), and
built on `odecore`. Read top to bottom:

1. data: spirals from random linear dynamics in closed form (`make_spirals`),
   cached under `data/cache/` keyed by their settings (`load_spirals`);
2. batches: a random 100-point window per spiral with 30, 50 or 100 of its
   points observed, irregularly, always keeping the first (`sample_batch`);
3. the post's ODE-VAE (`RNNEncoder`, `NeuralODEDecoder`, `ODEVAE`, `elbo_loss`);
4. the RNN baseline, a GRU decoder that takes the time gaps as input (`RNNBaseline`);
5. training (`train_vae`, `train_rnn`) with the settings of each budget;
6. evaluation: the paper's Table 2 protocol and extrapolation;
7. checkpoints under `data/checkpoints/`, named by budget.

Shapes follow the post: time first, `x` is `(T, batch, 2)` and `t` is
`(T, batch, 1)`, one time grid per sample.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from odecore import NNODEF, NeuralODE, get_device, output_dir

__all__ = [
    "SpiralConfig", "SpiralData", "make_spirals", "load_spirals", "true_trajectory",
    "angular_momentum", "Batch", "observed_positions", "observe", "sample_batch", "gather_time",
    "time_gaps", "RNNEncoder", "NeuralODEDecoder", "ODEVAE", "with_solver", "elbo_loss",
    "RNNBaseline", "TrainConfig", "train_config", "train_vae", "train_rnn", "train_rnn_async",
    "rmse",
    "trivial_predict", "heldout_windows", "evaluate_table2", "evaluate_extrapolation",
    "checkpoint_path", "save_checkpoint", "load_checkpoint", "PAPER_TABLE2",
]

# Table 2 of Chen et al. (2018): predictive RMSE on their own spirals.
PAPER_TABLE2 = {"RNN": {30: 0.3937, 50: 0.3202, 100: 0.1813},
                "Latent ODE": {30: 0.1642, 50: 0.1502, 100: 0.1346}}


# ---------------------------------------------------------------------------
# 1. Data
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SpiralConfig:
    """The post's spirals: 200 points on [0, 6.29*5], noise std 0.02.

    `n_spirals` are split into `n_spirals - n_test` training and `n_test`
    held-out spirals, each split exactly half clockwise, half counter-clockwise.
    """

    n_spirals: int = 1000
    n_test: int = 200
    n_points: int = 200
    t_max: float = 6.29 * 5
    noise_std: float = 0.02
    seed: int = 0

    def key(self) -> str:
        """A short hash of the settings: the cache file's name."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]


@dataclass
class SpiralData:
    """A split of spirals. `x` is noisy, `x_true` noise-free, both `(n_points, n, 2)`.

    `t` `(n_points,)` is shared by every spiral; `W` `(n, 2, 2)` and `x0`
    `(n, 2)` give each spiral's dynamics dx/dt = W x, so `true_trajectory`
    can evaluate it at any time; `ccw` is True for counter-clockwise spirals.
    """

    t: Tensor
    x: Tensor
    x_true: Tensor
    W: Tensor
    x0: Tensor
    ccw: Tensor

    def __len__(self) -> int:
        return self.x.shape[1]

    def to(self, device) -> SpiralData:
        return SpiralData(*(getattr(self, f).to(device) for f in
                            ("t", "x", "x_true", "W", "x0", "ccw")))


def true_trajectory(W: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """x(t) = expm(W t) x0 for each spiral, `(T, n, 2)`.

    `t` is `(T,)` (shared) or `(T, n, 1)` (per spiral); computed in float64.
    """
    W64, x064 = W.double(), x0.double()
    t64 = t.double()
    if t64.dim() == 1:
        E = torch.linalg.matrix_exp(W64[None] * t64.reshape(-1, 1, 1, 1))
    else:
        E = torch.linalg.matrix_exp(W64[None] * t64.reshape(*t64.shape[:2], 1, 1))
    return torch.einsum("tnij,nj->tni", E, x064).to(x0.dtype)


def make_spirals(cfg: SpiralConfig = SpiralConfig()) -> tuple[SpiralData, SpiralData]:
    """(train, test): the post's random spirals, in closed form, in one batch.

    dx/dt = W x with x0 ~ 2 N(0, I), W11, W22 = -0.1|N| - 0.05, W12 = |N|,
    W21 = -|N|: then x1 dx2/dt - x2 dx1/dt = -|W21| x1^2 - W12 x2^2 + ..., so
    these spirals turn clockwise; swapping W12 and W21 makes them turn
    counter-clockwise. Spirals alternate CW, CCW, so both splits (the first
    `n - n_test` and the last `n_test`) are exactly half of each. The post
    instead swapped whole tensors on odd indices (the directions then come in
    pairs) and integrated the spirals one at a time with Euler steps.
    """
    if cfg.n_spirals % 2 or cfg.n_test % 2 or not 0 < cfg.n_test < cfg.n_spirals:
        raise ValueError(f"need even n_spirals > n_test > 0 and even n_test, got {cfg}")
    g = torch.Generator().manual_seed(cfg.seed)
    n = cfg.n_spirals
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    x0 = 2.0 * randn(n, 2)
    W11 = -0.1 * randn(n).abs() - 0.05
    W22 = -0.1 * randn(n).abs() - 0.05
    W21 = -1.0 * randn(n).abs()
    W12 = 1.0 * randn(n).abs()
    ccw = torch.arange(n) % 2 == 1
    W12, W21 = torch.where(ccw, W21, W12), torch.where(ccw, W12, W21)
    W = torch.stack([torch.stack([W11, W12], -1), torch.stack([W21, W22], -1)], -2)
    t = torch.linspace(0.0, cfg.t_max, cfg.n_points, dtype=torch.float64)
    x_true = true_trajectory(W, x0, t)
    x = x_true + cfg.noise_std * randn(*x_true.shape)
    f32 = lambda a: a.to(torch.float32)
    split = n - cfg.n_test
    parts = []
    for sl in (slice(0, split), slice(split, n)):
        parts.append(SpiralData(f32(t), f32(x[:, sl]), f32(x_true[:, sl]), f32(W[sl]),
                                f32(x0[sl]), ccw[sl].clone()))
    return parts[0], parts[1]


def load_spirals(cfg: SpiralConfig = SpiralConfig(), cache: bool = True,
                 verbose: bool = False) -> tuple[SpiralData, SpiralData]:
    """`make_spirals(cfg)`, cached in `data/cache/spirals-<hash of cfg>.pt`."""
    path = output_dir("cache") / f"spirals-{cfg.key()}.pt"
    if cache and path.exists():
        blob = torch.load(path, weights_only=True)
        if blob["config"] == asdict(cfg):
            if verbose:
                print(f"spirals loaded from {path}")
            return SpiralData(**blob["train"]), SpiralData(**blob["test"])
    start = time.perf_counter()
    train, test = make_spirals(cfg)
    if verbose:
        print(f"{cfg.n_spirals} spirals generated in {time.perf_counter() - start:.3f} s")
    if cache:
        torch.save({"config": asdict(cfg), "train": vars(train), "test": vars(test)}, path)
        if verbose:
            print(f"cached in {path}")
    return train, test


def angular_momentum(x: Tensor, t: Tensor) -> Tensor:
    """Mean of x1 dx2/dt - x2 dx1/dt along each trajectory, `(batch,)`.

    `x` is `(T, batch, 2)` and `t` `(T,)`; dx/dt by central differences.
    Negative for clockwise motion, positive for counter-clockwise.
    """
    dx = torch.gradient(x, spacing=(t,), dim=0)[0]
    return (x[..., 0] * dx[..., 1] - x[..., 1] * dx[..., 0]).mean(0)


# ---------------------------------------------------------------------------
# 2. Batches: windows and irregular observations
# ---------------------------------------------------------------------------
@dataclass
class Batch:
    """One window per spiral and the points of it that are observed.

    `t_win` `(W, b, 1)`: each spiral's own window times (a per-sample grid);
    `idx` `(k, b)`: the observed positions in the window, sorted, first 0;
    `x_obs` `(k, b, 2)`, `t_obs` `(k, b, 1)`: what a model may see;
    `x_win` noisy and `x_true` noise-free `(W, b, 2)`: the whole window.
    """

    t_win: Tensor
    idx: Tensor
    x_obs: Tensor
    t_obs: Tensor
    x_win: Tensor
    x_true: Tensor
    spiral: Tensor


def observed_positions(k: int, window: int, batch: int, g: torch.Generator | None = None,
                       device=None) -> Tensor:
    """`(k, batch)` sorted positions in a window: 0 and k-1 others drawn at random."""
    if not 1 <= k <= window:
        raise ValueError(f"cannot observe {k} of {window} points")
    scores = torch.rand(batch, window - 1, generator=g)
    rest = scores.argsort(dim=1)[:, :k - 1] + 1
    idx = torch.cat([torch.zeros(batch, 1, dtype=torch.long), rest.sort(dim=1).values], 1)
    return idx.T.contiguous().to(device)


def observe(data: SpiralData, spirals: Tensor, starts: Tensor, k: int, window: int = 100,
            g: torch.Generator | None = None) -> Batch:
    """Windows `[start, start + window)` of the given spirals, `k` points observed."""
    dev = data.x.device
    spirals, starts = spirals.to(dev), starts.to(dev)
    pos = starts[None] + torch.arange(window, device=dev)[:, None]        # (W, b)
    x_win = data.x[pos, spirals[None]]
    x_true = data.x_true[pos, spirals[None]]
    t_win = data.t[pos].unsqueeze(-1)
    idx = observed_positions(k, window, len(spirals), g, dev)
    take = lambda a: a.gather(0, idx.unsqueeze(-1).expand(-1, -1, a.shape[-1]))
    return Batch(t_win, idx, take(x_win), take(t_win), x_win, x_true, spirals)


def sample_batch(data: SpiralData, batch_size: int, k: int, window: int = 100,
                 g: torch.Generator | None = None) -> Batch:
    """A training batch: random spirals, each with its own random window start."""
    n, n_points = len(data), data.x.shape[0]
    spirals = torch.randperm(n, generator=g)[:batch_size]
    starts = torch.randint(0, n_points - window + 1, (len(spirals),), generator=g)
    return observe(data, spirals, starts, k, window, g)


def gather_time(a: Tensor, idx: Tensor) -> Tensor:
    """`a[idx[i, b], b]` for `a` `(T, b, d)` and `idx` `(k, b)`: `(k, b, d)`."""
    return a.gather(0, idx.unsqueeze(-1).expand(-1, -1, a.shape[-1]))


# ---------------------------------------------------------------------------
# 3. The ODE-VAE
# ---------------------------------------------------------------------------
def time_gaps(t: Tensor) -> Tensor:
    """The encoder's time input: `t[i-1] - t[i]` (negative) at step i, 0 at the first.

    The encoder reads the sequence backwards, from the last observation to
    the first, and its final state must describe z(t0). So the input read
    with x_i is the signed time the encoder is about to travel, t_{i-1} - t_i,
    backwards hence negative, and the first observation, read last, carries 0:
    nothing left to travel, the state is at t0. That is the post's choice and
    we keep it. For a GRU the sign is a convention (negating the gap and the
    weights that read it gives the same network: see the notebook), but the
    pairing is not: each gap must sit with the observation it leads away from.
    """
    gaps = torch.zeros_like(t)
    gaps[1:] = t[:-1] - t[1:]
    return gaps


class RNNEncoder(nn.Module):
    """q(z0 | x): a GRU read backwards over (x_i, t_{i-1} - t_i), as in the post."""

    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.rnn = nn.GRU(input_dim + 1, hidden_dim)
        self.hid2lat = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        xt = torch.cat((x, time_gaps(t)), dim=-1)
        _, h0 = self.rnn(xt.flip((0,)))  # reversed: the last state is at t0
        z0 = self.hid2lat(h0[0])
        return z0[:, :self.latent_dim], z0[:, self.latent_dim:]


class NeuralODEDecoder(nn.Module):
    """p(x | z0): z(t) from time-invariant `NNODEF` dynamics, then a linear map to x."""

    def __init__(self, output_dim: int, hidden_dim: int, latent_dim: int,
                 method: str = "euler", h_max: float = 0.2, adjoint: bool = False):
        super().__init__()
        func = NNODEF(latent_dim, hidden_dim, time_invariant=True)
        self.ode = NeuralODE(func, method=method, h_max=h_max, adjoint=adjoint)
        self.l2h = nn.Linear(latent_dim, hidden_dim)
        self.h2o = nn.Linear(hidden_dim, output_dim)

    def forward(self, z0: Tensor, t: Tensor) -> Tensor:
        zs = self.ode(z0, t, return_whole_sequence=True)
        return self.h2o(self.l2h(zs))


class ODEVAE(nn.Module):
    """The post's ODE-VAE: latent 6, hidden 64 by default.

    `method`, `h_max`, `adjoint` set the decoder's solver. The defaults are
    this project's training settings: Euler with `h_max = 0.2`, i.e. one step
    per interval of the data's grid (spacing 0.158) when decoding on a
    window's grid, differentiated by backpropagation through the solver. The
    post used Euler with `h_max = 0.05` and the adjoint (notebook 03 compares).
    """

    def __init__(self, output_dim: int = 2, hidden_dim: int = 64, latent_dim: int = 6,
                 method: str = "euler", h_max: float = 0.2, adjoint: bool = False):
        super().__init__()
        self.hparams = dict(output_dim=output_dim, hidden_dim=hidden_dim,
                            latent_dim=latent_dim, method=method, h_max=h_max,
                            adjoint=adjoint)
        self.encoder = RNNEncoder(output_dim, hidden_dim, latent_dim)
        self.decoder = NeuralODEDecoder(output_dim, hidden_dim, latent_dim, method,
                                        h_max, adjoint)

    def forward(self, x: Tensor, t: Tensor, t_dec: Tensor | None = None, MAP: bool = False):
        """Encode (x, t), sample z0, decode at `t_dec` (default: t).

        Returns x_p `(len(t_dec), b, 2)`, z0, its mean and log-variance.
        """
        z_mean, z_log_var = self.encoder(x, t)
        z = z_mean if MAP else z_mean + torch.randn_like(z_mean) * torch.exp(0.5 * z_log_var)
        x_p = self.decoder(z, t if t_dec is None else t_dec)
        return x_p, z, z_mean, z_log_var

    @torch.no_grad()
    def generate_with_seed(self, seed_x: Tensor, seed_t: Tensor, t: Tensor) -> Tensor:
        """The post's generation: encode the seed, decode the mean at times `t`."""
        z_mean, _ = self.encoder(seed_x, seed_t)
        return self.decoder(z_mean, t)


def with_solver(vae: ODEVAE, method: str, h_max: float) -> ODEVAE:
    """A copy of `vae` whose decoder solves with another method or step (for checks)."""
    other = copy.deepcopy(vae)
    other.decoder.ode.opts = dict(other.decoder.ode.opts, method=method, h_max=float(h_max))
    other.hparams = dict(other.hparams, method=method, h_max=float(h_max))
    return other


def elbo_loss(x: Tensor, x_p: Tensor, z_mean: Tensor, z_log_var: Tensor,
              noise_std: float) -> Tensor:
    """The post's negative ELBO per observed point.

    0.5 * sum (x - x_p)^2 / sigma^2 over time and dims, plus KL(q(z0) || N(0, I)),
    averaged over the batch and divided by the number of observed points.
    """
    kl = -0.5 * torch.sum(1 + z_log_var - z_mean ** 2 - torch.exp(z_log_var), -1)
    rec = 0.5 * ((x - x_p) ** 2).sum(-1).sum(0) / noise_std ** 2
    return (rec + kl).mean() / x.shape[0]


# ---------------------------------------------------------------------------
# 4. The RNN baseline
# ---------------------------------------------------------------------------
class RNNBaseline(nn.Module):
    """The RNN counterpart of the ODE-VAE: the same backwards GRU encoder, and a
    GRU decoder that takes the time gaps as input instead of solving an ODE.

    The encoder's last state becomes the decoder's initial state h(t0); the
    decoder then steps from output time to output time, reading each gap
    t_i - t_{i-1} (0 at the first) and emitting x(t_i). It is trained like
    the VAE, but deterministically (no sampling, no KL), to reproduce the
    observed points at the observed times, so it learns to move its state
    over the irregular gaps it is given, the way the paper's RNN baseline
    gets "the time difference" as an input. Its state `state_dim` is the
    thing notebook 04 interpolates, as it interpolates the VAE's z0.
    """

    def __init__(self, input_dim: int = 2, hidden_dim: int = 64, state_dim: int = 32):
        super().__init__()
        self.hparams = dict(input_dim=input_dim, hidden_dim=hidden_dim, state_dim=state_dim)
        self.rnn = nn.GRU(input_dim + 1, hidden_dim)
        self.hid2state = nn.Linear(hidden_dim, state_dim)
        self.cell = nn.GRUCell(input_dim + 1, state_dim)
        self.state2x = nn.Linear(state_dim, input_dim)
        self.out = nn.Linear(state_dim, input_dim)

    def encode(self, x: Tensor, t: Tensor) -> Tensor:
        """h(t0) `(b, state_dim)` from the observations, read backwards as in `RNNEncoder`."""
        _, h = self.rnn(torch.cat((x, time_gaps(t)), -1).flip((0,)))
        return torch.tanh(self.hid2state(h[0]))

    def decode(self, h: Tensor, t: Tensor) -> Tensor:
        """x at each time of `t` `(T, b, 1)` from the state h(t[0]).

        Each step reads the previous output and the gap to the next time, and
        adds a change to the output (x_i = x_{i-1} + out(h_i)), the discrete
        counterpart of integrating dx/dt.
        """
        gaps = torch.zeros_like(t)
        gaps[1:] = t[1:] - t[:-1]
        x = self.state2x(h)
        xs = []
        for i in range(t.shape[0]):
            h = self.cell(torch.cat((x, gaps[i]), -1), h)
            x = x + self.out(h)
            xs.append(x)
        return torch.stack(xs)

    def forward(self, x: Tensor, t: Tensor, t_dec: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x, t), t if t_dec is None else t_dec)

    @torch.no_grad()
    def generate_with_seed(self, seed_x: Tensor, seed_t: Tensor, t: Tensor) -> Tensor:
        return self.decode(self.encode(seed_x, seed_t), t)


# ---------------------------------------------------------------------------
# 5. Training
# ---------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """How long and how to train; `train_config(budget)` gives each budget's."""

    vae_iters: int = 1500
    rnn_iters: int = 1500
    batch_size: int = 100
    lr: float = 3e-3
    rnn_lr: float = 3e-3
    n_obs: tuple = (30, 50, 100)
    window: int = 100
    method: str = "euler"
    h_max: float = 0.2
    adjoint: bool = False
    grad_clip: float = 10.0
    seed: int = 0
    frame_every: int = 0
    extra: dict = field(default_factory=dict)


def train_config(budget: str) -> TrainConfig:
    """Each budget's training settings.

    smoke: a few dozen iterations, to check that everything runs;
    quick: about 5 minutes of training on the project's 2-core CPU (4000 VAE
    and 3000 RNN iterations at about 0.08 and 0.06 s each, on the two cores at
    once: `train_rnn_async`);
    full: larger batches and longer schedules, sized to finish within
    10 minutes on one H100 (an estimate: not measured).
    """
    if budget == "smoke":
        return TrainConfig(vae_iters=60, rnn_iters=60, frame_every=20)
    if budget == "quick":
        return TrainConfig(vae_iters=4000, rnn_iters=3000, frame_every=200)
    if budget == "full":
        return TrainConfig(vae_iters=12000, rnn_iters=8000, batch_size=256, frame_every=600)
    raise ValueError(f"unknown budget {budget!r}; use one of smoke, quick, full")


def _fixed_batch(data: SpiralData, cfg: TrainConfig, n: int = 200) -> Batch:
    """The same 50-point windows of (up to) 200 training spirals, before and after training."""
    g = torch.Generator().manual_seed(cfg.seed + 99)
    n = min(n, len(data))
    starts = torch.randint(0, data.x.shape[0] - cfg.window + 1, (n,), generator=g)
    return observe(data, torch.arange(n), starts, min(50, cfg.window), cfg.window, g)


@torch.no_grad()
def _vae_batch_loss(vae: ODEVAE, b: Batch, noise_std: float) -> float:
    x_p, _, m, lv = vae(b.x_obs, b.t_obs, b.t_win, MAP=True)
    return float(elbo_loss(b.x_obs, gather_time(x_p, b.idx), m, lv, noise_std))


@torch.no_grad()
def _rnn_batch_loss(rnn: RNNBaseline, b: Batch, noise_std: float) -> float:
    pred = rnn(b.x_obs, b.t_obs)
    return float(0.5 * ((pred - b.x_obs) ** 2).sum(-1).sum(0).mean() / noise_std ** 2
                 / b.x_obs.shape[0])


def _cosine(optim, iters: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optim, lambda i: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(i, iters) / iters)))


def _progress(n: int, desc: str, enabled: bool):
    """A text progress bar (tqdm) over range(n), or the plain range."""
    if not enabled:
        return range(n)
    import warnings

    with warnings.catch_warnings():  # no ipywidgets here: tqdm falls back to text bars
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(range(n), desc=desc, mininterval=10.0)


def train_vae(vae: ODEVAE, data: SpiralData, cfg: TrainConfig, noise_std: float = 0.02,
              callback=None, log_every: int = 0, progress: bool = False) -> dict:
    """Train the ODE-VAE on random windows; returns the history.

    Each batch observes k of each window's points (k drawn from `cfg.n_obs`),
    the encoder reads those, the decoder solves on the window's own grid (one
    solver step per grid interval: `h_max` above the data's spacing) and the
    ELBO scores the observed points. `callback(i, vae)` runs every
    `cfg.frame_every` iterations (the notebook draws frames with it).
    The history holds each batch's loss, its k, the elapsed time, and the
    loss of one fixed batch of training windows before and after training
    (`fixed_batch_loss`, without sampling: a steadier "did it learn" than
    single batches, whose loss swings with the size of their spirals).
    """
    dev = next(vae.parameters()).device
    data = data.to(dev)
    g = torch.Generator().manual_seed(cfg.seed)
    optim = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    sched = _cosine(optim, cfg.vae_iters)
    hist = {"loss": [], "k": [], "time": []}
    fixed = _fixed_batch(data, cfg)
    vae.eval()
    hist["fixed_batch_loss"] = [_vae_batch_loss(vae, fixed, noise_std)]
    start = time.perf_counter()
    vae.train()
    bar = _progress(cfg.vae_iters, "latent ODE", progress)
    for i in bar:
        k = cfg.n_obs[int(torch.randint(len(cfg.n_obs), (1,), generator=g))]
        b = sample_batch(data, cfg.batch_size, k, cfg.window, g)
        x_p, _, z_mean, z_log_var = vae(b.x_obs, b.t_obs, b.t_win)
        loss = elbo_loss(b.x_obs, gather_time(x_p, b.idx), z_mean, z_log_var, noise_std)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        optim.step()
        sched.step()
        hist["loss"].append(loss.item())
        hist["k"].append(k)
        hist["time"].append(time.perf_counter() - start)
        if callback is not None and cfg.frame_every and (i % cfg.frame_every == 0
                                                         or i == cfg.vae_iters - 1):
            vae.eval()
            callback(i, vae)
            vae.train()
        if progress and i % 50 == 49:
            bar.set_postfix(loss=f"{np.mean(hist['loss'][-50:]):.1f}", refresh=False)
        if log_every and (i % log_every == 0 or i == cfg.vae_iters - 1):
            recent = np.mean(hist["loss"][-log_every:])
            print(f"vae iter {i:5d}  loss {recent:9.2f}  {hist['time'][-1]:6.1f} s", flush=True)
    vae.eval()
    hist["fixed_batch_loss"].append(_vae_batch_loss(vae, fixed, noise_std))
    return hist


def train_rnn(rnn: RNNBaseline, data: SpiralData, cfg: TrainConfig, noise_std: float = 0.02,
              log_every: int = 0, progress: bool = False) -> dict:
    """Train the RNN baseline on the same windows: reproduce the observed points."""
    dev = next(rnn.parameters()).device
    data = data.to(dev)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    optim = torch.optim.Adam(rnn.parameters(), lr=cfg.rnn_lr)
    sched = _cosine(optim, cfg.rnn_iters)
    hist = {"loss": [], "k": [], "time": []}
    fixed = _fixed_batch(data, cfg)
    hist["fixed_batch_loss"] = [_rnn_batch_loss(rnn, fixed, noise_std)]
    start = time.perf_counter()
    rnn.train()
    bar = _progress(cfg.rnn_iters, "RNN", progress)
    for i in bar:
        k = cfg.n_obs[int(torch.randint(len(cfg.n_obs), (1,), generator=g))]
        b = sample_batch(data, cfg.batch_size, k, cfg.window, g)
        pred = rnn(b.x_obs, b.t_obs)  # decoded at the observed times, over their gaps
        # the VAE's Gaussian likelihood, per observed point (no KL: it is deterministic)
        loss = 0.5 * ((pred - b.x_obs) ** 2).sum(-1).sum(0).mean() / noise_std ** 2 / k
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(rnn.parameters(), cfg.grad_clip)
        optim.step()
        sched.step()
        hist["loss"].append(loss.item())
        hist["k"].append(k)
        hist["time"].append(time.perf_counter() - start)
        if progress and i % 50 == 49:
            bar.set_postfix(loss=f"{np.mean(hist['loss'][-50:]):.1f}", refresh=False)
        if log_every and (i % log_every == 0 or i == cfg.rnn_iters - 1):
            recent = np.mean(hist["loss"][-log_every:])
            print(f"rnn iter {i:5d}  loss {recent:9.2f}  {hist['time'][-1]:6.1f} s", flush=True)
    rnn.eval()
    hist["fixed_batch_loss"].append(_rnn_batch_loss(rnn, fixed, noise_std))
    return hist


class _Done:
    """A finished result with the `result()` of a future (training ran in this process)."""

    def __init__(self, value):
        self.value = value

    def result(self) -> tuple:
        return self.value


def _train_new_rnn(data: SpiralData, cfg: TrainConfig, noise_std: float, seed: int,
                   device: torch.device):
    torch.manual_seed(seed)
    rnn = RNNBaseline().to(device)
    return rnn, train_rnn(rnn, data, cfg, noise_std)


def _train_in_worker(*args):
    # A forked child must not enter the parent's OpenMP thread pool (it would wait
    # forever for threads that were not copied): one thread, no parallel regions.
    torch.set_num_threads(1)
    return _train_new_rnn(*args)


def train_rnn_async(data: SpiralData, cfg: TrainConfig, noise_std: float = 0.02,
                    seed: int = 1, device: torch.device | str | None = None
                    ) -> Future | _Done:
    """Train a new `RNNBaseline` (initialised from `seed`) on a spare core.

    The VAE and the RNN are small single-threaded models, so on a multi-core
    CPU a forked process trains the RNN while the caller trains the VAE, and
    `.result()` returns `(rnn, history)` when it is done. On a GPU, or with one
    core, it trains here and now. Either way the result is the same: the RNN's
    initial weights and batches come from its own seeds, not from the caller's
    random state.
    """
    device = torch.device(device) if device is not None else get_device()
    if device.type != "cpu" or (os.cpu_count() or 1) < 2:
        return _Done(_train_new_rnn(data, cfg, noise_std, seed, device))
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    future = pool.submit(_train_in_worker, data.to("cpu"), cfg, noise_std, seed, device)
    pool.shutdown(wait=False)  # the worker finishes its one job, then exits
    return future


# ---------------------------------------------------------------------------
# 6. Evaluation
# ---------------------------------------------------------------------------
def rmse(pred: Tensor, target: Tensor) -> float:
    """Root mean squared error over every time, spiral and coordinate."""
    return float(((pred - target) ** 2).mean().sqrt())


def trivial_predict(x_obs: Tensor, n: int) -> Tensor:
    """The trivial predictor: each window's mean of its observed points, at every time."""
    return x_obs.mean(0, keepdim=True).expand(n, -1, -1)


def heldout_windows(data: SpiralData, window: int = 100, seed: int = 1234) -> tuple[Tensor, Tensor]:
    """One fixed random window start per held-out spiral: (spirals, starts)."""
    g = torch.Generator().manual_seed(seed)
    n, n_points = len(data), data.x.shape[0]
    return torch.arange(n), torch.randint(0, n_points - window + 1, (n,), generator=g)


@torch.no_grad()
def evaluate_table2(vae: ODEVAE, rnn: RNNBaseline | None, data: SpiralData,
                    n_obs=(100, 50, 30), window: int = 100, seed: int = 1234) -> dict:
    """The paper's Table 2 protocol on held-out spirals.

    One window per spiral; observe k of its points (irregularly, always the
    first), predict all `window` times, RMSE against the noise-free trajectory.
    Returns {k: {"Latent ODE": .., "RNN": .., "trivial": ..}} and the batches.
    """
    dev = next(vae.parameters()).device
    data = data.to(dev)
    spirals, starts = heldout_windows(data, window, seed)
    out, batches = {}, {}
    for k in n_obs:
        g = torch.Generator().manual_seed(seed + k)
        b = observe(data, spirals, starts, k, window, g)
        row = {"trivial": rmse(trivial_predict(b.x_obs, window), b.x_true)}
        x_p = vae.generate_with_seed(b.x_obs, b.t_obs, b.t_win)
        row["Latent ODE"] = rmse(x_p, b.x_true)
        preds = {"Latent ODE": x_p}
        if rnn is not None:
            r = rnn.generate_with_seed(b.x_obs, b.t_obs, b.t_win)
            row["RNN"] = rmse(r, b.x_true)
            preds["RNN"] = r
        out[k] = row
        batches[k] = (b, preds)
    return {"rmse": out, "batches": batches}


@torch.no_grad()
def evaluate_extrapolation(vae: ODEVAE, rnn: RNNBaseline | None, data: SpiralData,
                           k: int = 50, window: int = 100, seed: int = 4321) -> dict:
    """Extrapolation past the window, the post's way: seed with 50 points, generate 200.

    Each held-out spiral's first `window` points form the window; `k` of them
    are observed (irregularly, always the first) and every model predicts all
    `n_points` times. RMSE against the noise-free spiral inside the window and
    past it, beside the trivial predictor (the mean of the observed points).
    """
    dev = next(vae.parameters()).device
    data = data.to(dev)
    T, n = data.x.shape[:2]
    g = torch.Generator().manual_seed(seed)
    b = observe(data, torch.arange(n), torch.zeros(n, dtype=torch.long), k, window, g)
    t = data.t[:, None, None].expand(T, n, 1)
    preds = {"Latent ODE": vae.generate_with_seed(b.x_obs, b.t_obs, t)}
    if rnn is not None:
        preds["RNN"] = rnn.generate_with_seed(b.x_obs, b.t_obs, t)
    preds["trivial"] = trivial_predict(b.x_obs, T)
    res = {name: {"window": rmse(p[:window], data.x_true[:window]),
                  "extrapolation": rmse(p[window:], data.x_true[window:])}
           for name, p in preds.items()}
    return {"rmse": res, "preds": preds, "batch": b, "t": t}


# ---------------------------------------------------------------------------
# 7. Checkpoints
# ---------------------------------------------------------------------------
def checkpoint_path(budget: str) -> Path:
    """`data/checkpoints/spirals-<budget>.pt`: notebook 03 writes it, 04 reads it."""
    return output_dir("checkpoints") / f"spirals-{budget}.pt"


def save_checkpoint(path: Path, vae: ODEVAE, rnn: RNNBaseline | None, data_cfg: SpiralConfig,
                    train_cfg: TrainConfig, extra: dict | None = None) -> Path:
    """The models' weights and settings, the data settings, and anything in `extra`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"vae": vae.state_dict(), "vae_hparams": vae.hparams,
            "rnn": None if rnn is None else rnn.state_dict(),
            "rnn_hparams": None if rnn is None else rnn.hparams,
            "data_config": asdict(data_cfg), "train_config": asdict(train_cfg),
            "extra": extra or {}}
    torch.save(blob, path)
    return path


def load_checkpoint(path: Path, device=None) -> dict:
    """Rebuild what `save_checkpoint` wrote.

    Returns {"vae", "rnn", "data_config", "train_config", "extra"}, the models
    on `device` (default: CUDA when present) and in eval mode.
    """
    device = device or get_device()
    blob = torch.load(Path(path), map_location=device, weights_only=False)
    vae = ODEVAE(**blob["vae_hparams"]).to(device)
    vae.load_state_dict(blob["vae"])
    vae.eval()
    rnn = None
    if blob["rnn"] is not None:
        rnn = RNNBaseline(**blob["rnn_hparams"]).to(device)
        rnn.load_state_dict(blob["rnn"])
        rnn.eval()
    return {"vae": vae, "rnn": rnn, "data_config": SpiralConfig(**blob["data_config"]),
            "train_config": TrainConfig(**blob["train_config"]), "extra": blob["extra"]}

