"""spirals: two spiral datasets, the latent ODE, a fair RNN, training and the paper's protocol.

Shared by notebooks 03 (train and measure) and 04 (walk the latent space), and
built on `odecore`. Read top to bottom:

1. data: the paper's spirals, as its authors' example generates them
   (`PaperSpiralConfig`), and the post's random linear spirals (`SpiralConfig`),
   both split into training and held-out windows and cached (`load_spirals`);
2. batches: windows with k of their first 100 points observed, irregularly
   (`observe`, `sample_batch`), and the positions the protocol scores;
3. the latent ODE (`RNNEncoder`, `LatentODEF`, `ODEVAE`) and its ELBO;
4. the RNN baseline: the same encoder, a GRU instead of the ODE (`RNNBaseline`);
5. training, the same for both models (`train_model`), and workers that train
   several models at once on a multi-core CPU (`run_parallel`);
6. the paper's evaluation: interpolation and extrapolation RMSE (`evaluate`),
   and how well a linear rule tells the directions apart from z0;
7. checkpoints under `data/checkpoints/`.

Shapes follow the post: time first, `x` is `(T, batch, 2)` and `t` is
`(T, batch, 1)`, one time grid per sample.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from nbutils import get_device, output_dir, progress, worker_pool
from odecore import ODEF, NeuralODE

# Table 2 of Chen et al. (2018): predictive RMSE on their spirals, from k observed points.
PAPER_TABLE2 = {"RNN": {30: 0.3937, 50: 0.3202, 100: 0.1813},
                "Latent ODE": {30: 0.1642, 50: 0.1502, 100: 0.1346}}


# ---------------------------------------------------------------------------
# 1. Data
# ---------------------------------------------------------------------------
_DATA_FORMAT = 3  # bump when a generator changes: old caches are then regenerated


class _Keyed:
    def key(self) -> str:
        """A short hash of the kind of data and its settings: the cache file's name."""
        blob = json.dumps({"kind": type(self).__name__, "format": _DATA_FORMAT, **asdict(self)},
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class PaperSpiralConfig(_Keyed):
    """The paper's spirals (Section 5.1), as its authors' example code makes them.

    Two fixed Archimedean spirals sampled at `n_total` times on [0, 6 pi]: a
    clockwise one centred at (-5, 0) and a counter-clockwise one at (+5, 0).
    Each of `n_windows` samples is a stretch of one of them (either with
    probability 1/2), starting at a random index that leaves `window` points
    of room before it and `window + horizon` points from it to the end: the
    first `window` points are what a model may observe, the next `horizon`
    what it must extrapolate. Gaussian noise of std `noise_std` on every point.
    Training windows carry their next `horizon` points too (noisy, like all
    observed data), so that a training loss may score them (`TrainConfig.horizon`).
    The clockwise spiral is not Archimedean: its radius is b 50 / (t_max + 1 - t).
    """

    n_windows: int = 1000
    n_test: int = 200
    n_total: int = 500
    window: int = 100
    horizon: int = 100
    t_max: float = 6 * math.pi
    a: float = 0.0
    b: float = 0.3
    noise_std: float = 0.3
    seed: int = 0
    name = "paper"


@dataclass(frozen=True)
class SpiralConfig(_Keyed):
    """The post's spirals: random linear dynamics, 200 points on [0, 6.29*5], noise 0.02.

    `n_spirals` are split into `n_spirals - n_test` training and `n_test`
    held-out spirals, each split exactly half clockwise, half counter-clockwise.
    """

    n_spirals: int = 1000
    n_test: int = 200
    n_points: int = 200
    t_max: float = 6.29 * 5
    noise_std: float = 0.02
    seed: int = 0
    name = "post"


@dataclass
class SpiralData:
    """Samples of one split. `x` is noisy, `x_true` noise-free, both `(T, n, 2)`.

    `t` `(T,)` is shared by every sample; `ccw` is True for counter-clockwise
    samples; training windows are drawn from the first `train_points` points.
    The post's spirals also keep their dynamics dx/dt = W x (`W` `(n, 2, 2)`,
    `x0` `(n, 2)`), the paper's the index where each sample starts on its
    spiral (`start`).
    """

    t: Tensor
    x: Tensor
    x_true: Tensor
    ccw: Tensor
    train_points: int
    noise_std: float
    W: Tensor | None = None
    x0: Tensor | None = None
    start: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[1]

    def to(self, device) -> SpiralData:
        move = lambda v: v.to(device) if isinstance(v, Tensor) else v
        return SpiralData(**{k: move(v) for k, v in vars(self).items()})

    def subset(self, keep: Tensor) -> SpiralData:
        """The samples where `keep` (a `(n,)` mask or indices), every field alike."""
        pick = lambda k, v: (v[:, keep] if k in ("x", "x_true") else
                             v[keep] if isinstance(v, Tensor) and k != "t" else v)
        return SpiralData(**{k: pick(k, v) for k, v in vars(self).items()})


def paper_spiral_curves(cfg: PaperSpiralConfig = PaperSpiralConfig()) -> tuple[Tensor, Tensor]:
    """The two noise-free spirals `(n_total, 2)` each: (clockwise, counter-clockwise), and t.

    Returns `(curves (2, n_total, 2), t (n_total,))`, in float64.
    """
    t = torch.linspace(0.0, cfg.t_max, cfg.n_total, dtype=torch.float64)
    th_cw = cfg.t_max + 1.0 - t                 # the angle runs backwards: clockwise
    r_cw = cfg.a + cfg.b * 50.0 / th_cw
    cw = torch.stack([r_cw * torch.cos(th_cw) - 5.0, r_cw * torch.sin(th_cw)], -1)
    r_cc = cfg.a + cfg.b * t
    cc = torch.stack([r_cc * torch.cos(t) + 5.0, r_cc * torch.sin(t)], -1)
    return torch.stack([cw, cc]), t


def make_paper_spirals(cfg: PaperSpiralConfig = PaperSpiralConfig()
                       ) -> tuple[SpiralData, SpiralData]:
    """(train, held-out): windows of the paper's two spirals, noisy, in one batch.

    Every window, training or held-out, is `window + horizon` points from a
    start that leaves `window` points before it (as the authors' generator
    does) and `window + horizon` from it to the end: held-out windows need the
    `horizon` points for the extrapolation score, training windows for a loss
    that teaches extrapolation. The two splits share the two curves but never a
    noisy point. Every window's clock starts at 0: the dynamics are time-invariant.
    """
    span = cfg.window + cfg.horizon
    if cfg.n_total < cfg.window + span or not 0 < cfg.n_test < cfg.n_windows:
        raise ValueError(f"need n_total >= 2 window + horizon and 0 < n_test < n_windows: {cfg}")
    g = torch.Generator().manual_seed(cfg.seed)
    curves, t = paper_spiral_curves(cfg)
    n, n_train = cfg.n_windows, cfg.n_windows - cfg.n_test
    ccw = torch.rand(n, generator=g, dtype=torch.float64) > 0.5
    start = torch.randint(cfg.window, cfg.n_total - span + 1, (n,), generator=g)
    parts = []
    for sl in (slice(0, n_train), slice(n_train, n)):
        pos = start[sl][None] + torch.arange(span)[:, None]                # (span, m)
        x_true = curves[ccw[sl].long()[None].expand_as(pos), pos]          # (span, m, 2)
        x = x_true + cfg.noise_std * torch.randn(x_true.shape, generator=g, dtype=torch.float64)
        parts.append(SpiralData((t[:span] - t[0]).float(), x.float(), x_true.float(),
                                ccw[sl].clone(), span, cfg.noise_std,
                                start=start[sl].clone()))
    return parts[0], parts[1]


def true_trajectory(W: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """x(t) = expm(W t) x0 for each of the post's spirals, `(T, n, 2)`.

    `t` is `(T,)` (shared) or `(T, n, 1)` (per spiral); computed in float64.
    """
    W64, x064, t64 = W.double(), x0.double(), t.double()
    if t64.dim() == 1:
        E = torch.linalg.matrix_exp(W64[None] * t64.reshape(-1, 1, 1, 1))
    else:
        E = torch.linalg.matrix_exp(W64[None] * t64.reshape(*t64.shape[:2], 1, 1))
    return torch.einsum("tnij,nj->tni", E, x064).to(x0.dtype)


def make_spirals(cfg: SpiralConfig = SpiralConfig()) -> tuple[SpiralData, SpiralData]:
    """(train, held-out): the post's random spirals, in closed form, in one batch.

    dx/dt = W x with x0 ~ 2 N(0, I), W11, W22 = -0.1|N| - 0.05, W12 = |N|,
    W21 = -|N|: these turn clockwise; swapping W12 and W21 makes them turn
    counter-clockwise. Spirals alternate CW, CCW, so both splits are exactly
    half of each. (The post swapped whole tensors on odd indices, so its
    directions come in pairs, and integrated each spiral with Euler steps.)
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
        parts.append(SpiralData(f32(t), f32(x[:, sl]), f32(x_true[:, sl]), ccw[sl].clone(),
                                cfg.n_points, cfg.noise_std, W=f32(W[sl]), x0=f32(x0[sl])))
    return parts[0], parts[1]


def make_data(cfg: PaperSpiralConfig | SpiralConfig) -> tuple[SpiralData, SpiralData]:
    """Either dataset from its settings."""
    if isinstance(cfg, PaperSpiralConfig):
        return make_paper_spirals(cfg)
    if isinstance(cfg, SpiralConfig):
        return make_spirals(cfg)
    raise TypeError(f"not a spiral dataset's settings: {cfg!r}")


def load_spirals(cfg: PaperSpiralConfig | SpiralConfig = PaperSpiralConfig(), cache: bool = True,
                 verbose: bool = False) -> tuple[SpiralData, SpiralData]:
    """`make_data(cfg)`, cached in `data/cache/spirals-<hash of kind and settings>.pt`."""
    path = output_dir("cache") / f"spirals-{cfg.key()}.pt"
    if cache and path.exists():
        blob = torch.load(path, weights_only=True)
        if blob.get("key") == cfg.key():
            if verbose:
                print(f"spirals loaded from {path}")
            return SpiralData(**blob["train"]), SpiralData(**blob["test"])
    train, test = make_data(cfg)
    if cache:
        torch.save({"key": cfg.key(), "train": vars(train), "test": vars(test)}, path)
        if verbose:
            print(f"spirals generated and cached in {path}")
    return train, test


def angular_momentum(x: Tensor, t: Tensor) -> Tensor:
    """Mean of x1 dx2/dt - x2 dx1/dt along each trajectory about its own mean, `(batch,)`.

    `x` is `(T, batch, 2)` and `t` `(T,)`; dx/dt by central differences.
    Negative for clockwise motion, positive for counter-clockwise. Measured
    about each trajectory's centre, so a spiral centred off the origin (the
    paper's) gets the sign of its turning, not of its place.
    """
    x = x - x.mean(0, keepdim=True)
    dx = torch.gradient(x, spacing=(t,), dim=0)[0]
    return (x[..., 0] * dx[..., 1] - x[..., 1] * dx[..., 0]).mean(0)


def winding_angle(x: Tensor) -> Tensor:
    """How far the direction of travel turns along each path, in turns, `(batch,)`.

    `x` is `(T, batch, 2)`. The sum of the signed angles between consecutive
    displacements: positive counter-clockwise, negative clockwise, and 0 for a
    straight path wherever it lies (the angular momentum about a point is not:
    a straight decoding that passes beside the point has one).
    """
    d = x[1:] - x[:-1]
    a, b = d[:-1], d[1:]
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return torch.atan2(cross, (a * b).sum(-1)).sum(0) / (2 * math.pi)


def heavy_tail(data: SpiralData, points: int = 100) -> dict:
    """How the largest samples dominate a squared-error loss over the first `points`.

    Returns each sample's largest |x| (`max_abs` `(n,)`) and the share of the
    summed squared signal held by the top 1% of samples (`top1_share`).
    """
    x = data.x_true[:points]
    max_abs = x.abs().amax((0, 2))
    energy = (x ** 2).sum((0, 2))
    top = max(1, len(energy) // 100)
    return {"max_abs": max_abs,
            "top1_share": float(energy.sort(descending=True).values[:top].sum() / energy.sum())}


# ---------------------------------------------------------------------------
# 2. Batches: windows, irregular observations, the scored positions
# ---------------------------------------------------------------------------
@dataclass
class Batch:
    """Windows of some samples and the points of them that are observed.

    `t_grid` `(G, b, 1)`: each sample's grid from its window's start (a
    per-sample grid); `idx` `(k, b)`: the observed positions, sorted, first 0,
    all inside the first `window` positions; `x_obs`, `t_obs` `(k, b, ·)`: what
    a model may see; `x_grid` noisy and `x_true` noise-free `(G, b, 2)`.
    """

    t_grid: Tensor
    idx: Tensor
    x_obs: Tensor
    t_obs: Tensor
    x_grid: Tensor
    x_true: Tensor
    sample: Tensor
    window: int


def gather_time(a: Tensor, idx: Tensor) -> Tensor:
    """`a[idx[i, b], b]` for `a` `(T, b, d)` and `idx` `(k, b)`: `(k, b, d)`."""
    return a.gather(0, idx.unsqueeze(-1).expand(-1, -1, a.shape[-1]))


def observed_positions(k: int, window: int, batch: int, g: torch.Generator | None = None,
                       device=None) -> Tensor:
    """`(k, batch)` sorted positions in a window: 0, and k-1 others drawn without replacement.

    The first point is always observed so that z0, which the encoder reports
    at the first observed time, is the state at the window's start.
    """
    if not 1 <= k <= window:
        raise ValueError(f"cannot observe {k} of {window} points")
    scores = torch.rand(batch, window - 1, generator=g)
    rest = scores.argsort(dim=1)[:, :k - 1] + 1
    idx = torch.cat([torch.zeros(batch, 1, dtype=torch.long), rest.sort(dim=1).values], 1)
    return idx.T.contiguous().to(device)


def observe(data: SpiralData, samples: Tensor, starts: Tensor, k: int, window: int = 100,
            horizon: int = 0, g: torch.Generator | None = None) -> Batch:
    """Windows `[start, start + window + horizon)`; `k` of the first `window` points observed."""
    dev = data.x.device
    samples, starts = samples.to(dev), starts.to(dev)
    span = window + horizon
    if int(starts.max()) + span > data.x.shape[0]:
        raise ValueError(f"a window of {window} + {horizon} points from start "
                         f"{int(starts.max())} runs past the {data.x.shape[0]} points")
    pos = starts[None] + torch.arange(span, device=dev)[:, None]              # (G, b)
    x_grid, x_true = data.x[pos, samples[None]], data.x_true[pos, samples[None]]
    t_grid = data.t[pos].unsqueeze(-1)
    idx = observed_positions(k, window, len(samples), g, dev)
    return Batch(t_grid, idx, gather_time(x_grid, idx), gather_time(t_grid, idx), x_grid,
                 x_true, samples, window)


def sample_batch(data: SpiralData, batch_size: int, k: int, window: int = 100,
                 g: torch.Generator | None = None, horizon: int = 0) -> Batch:
    """A training batch: random samples, each with its own random window in `train_points`.

    Each window is followed by `horizon` more points, which a model is not
    shown but the loss may score (`training_targets`).
    """
    n = len(data)
    room = data.train_points - window - horizon
    if room < 0:
        raise ValueError(f"training samples hold {data.train_points} points, too few for a "
                         f"window of {window} and {horizon} after it")
    samples = torch.randperm(n, generator=g)[:batch_size]
    starts = torch.randint(0, room + 1, (len(samples),), generator=g)
    return observe(data, samples, starts, k, window, horizon, g)


def training_targets(b: Batch, horizon: int = 0) -> Tensor:
    """`(k + horizon, b)` positions a training loss scores: the observed ones, then the
    `horizon` points after the window (noisy data the encoder was not shown).

    Scoring only the observed points teaches a model to fit what it saw and
    nothing about what follows; the points after the window teach the flow to
    stay right past the data, which is what the protocol measures.
    """
    if b.window + horizon > b.t_grid.shape[0]:
        raise ValueError(f"the batch's grid holds {b.t_grid.shape[0]} points, too few for "
                         f"{horizon} after a window of {b.window}")
    after = b.window + torch.arange(horizon, device=b.idx.device)[:, None]
    after = after.expand(-1, b.idx.shape[1])
    return torch.cat([b.idx, after])


def heldout_batch(data: SpiralData, k: int, window: int = 100, horizon: int = 100,
                  seed: int = 1234) -> Batch:
    """The protocol's batch: every held-out sample from its start, k of `window` observed."""
    g = torch.Generator().manual_seed(seed + k)
    n = len(data)
    return observe(data, torch.arange(n), torch.zeros(n, dtype=torch.long), k, window,
                   horizon, g)


def span_mask(b: Batch) -> Tensor:
    """`(G, b)`: True at the positions inside the observed span (first to last observed)."""
    pos = torch.arange(b.t_grid.shape[0], device=b.idx.device)[:, None]
    return pos <= b.idx[-1][None]


def extrapolation_positions(b: Batch, horizon: int | None = None) -> Tensor:
    """`(horizon, b)`: the `horizon` positions after each sample's last observation.

    By default as many as the grid holds after the window (the protocol's 100).
    """
    horizon = b.t_grid.shape[0] - b.window if horizon is None else horizon
    last = b.idx[-1]
    if int(last.max()) + horizon >= b.t_grid.shape[0]:
        raise ValueError(f"the grid holds {b.t_grid.shape[0]} points, too few for "
                         f"{horizon} after the last observation")
    return last[None] + torch.arange(1, horizon + 1, device=last.device)[:, None]


# ---------------------------------------------------------------------------
# 3. The latent ODE
# ---------------------------------------------------------------------------
def time_gaps(t: Tensor) -> Tensor:
    """The encoder's time input: `t[i-1] - t[i]` (negative) at step i, 0 at the first.

    The encoder reads the sequence backwards, from the last observation to
    the first, and its final state must describe z(t0). So the input read
    with x_i is the signed time the encoder is about to travel, t_{i-1} - t_i,
    backwards hence negative, and the first observation, read last, carries 0.
    """
    gaps = torch.zeros_like(t)
    gaps[1:] = t[:-1] - t[1:]
    return gaps


class RNNEncoder(nn.Module):
    """q(z0 | x): a GRU read backwards over (x_i, t_{i-1} - t_i); mean and log-variance."""

    def __init__(self, obs_dim: int, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.rnn = nn.GRU(obs_dim + 1, hidden_dim)
        self.hid2lat = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _, h = self.rnn(torch.cat((x, time_gaps(t)), -1).flip((0,)))  # the last state is at t0
        out = self.hid2lat(h[0])
        return out[:, :self.latent_dim], out[:, self.latent_dim:]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class LatentODEF(ODEF):
    """dz/dt = MLP(z): time-invariant latent dynamics, `layers` hidden layers of `hidden` ELUs."""

    def __init__(self, latent_dim: int, hidden_dim: int, layers: int = 1):
        super().__init__()
        self.net = _mlp([latent_dim] + [hidden_dim] * layers + [latent_dim])

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return self.net(z)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and solver of both models.

    The defaults are this project's recipe for the paper's spirals (notebook
    03's ablation compares it with the paper's sizes, `paper()`); `post()` is
    the same recipe for the post's spirals.
    """

    obs_dim: int = 2
    rnn_hidden: int = 25       # the encoder's GRU (both models) and the RNN's decoder GRU
    latent_dim: int = 6        # z0 of the latent ODE; the RNN's code
    ode_hidden: int = 40
    ode_layers: int = 1
    dec_hidden: int = 40
    method: str = "rk4"        # the model's solver (training may start on a cheaper one)
    h_max: float = 0.04        # one step per grid interval (the paper's grid: 0.0378)
    normalise: bool = False    # divide each window by its scale, multiply predictions back

    @staticmethod
    def paper() -> ModelConfig:
        """Section 5.1's sizes: GRU 25, latent 4, one hidden layer of 20 in f and in g."""
        return ModelConfig(latent_dim=4, ode_hidden=20, dec_hidden=20)

    @staticmethod
    def post() -> ModelConfig:
        """The recipe at the post's grid spacing (0.158), with room for system identification.

        Each post's spiral has its own W, so z0 must carry the state (2 numbers)
        and the dynamics (4): a latent of 10 leaves room for both (6 barely
        holds them), and the encoder's GRU of 64 (the post's size) reads them
        off the window. Linear dynamics do not care about scale (c x solves
        dx/dt = W x when x does), so each window is divided by the RMS of its
        observed points and its predictions multiplied back (`window_scale`):
        the models see spirals of one size and identify only W and a direction.
        """
        return ModelConfig(rnn_hidden=64, latent_dim=10, h_max=0.2, normalise=True)


def window_scale(x: Tensor, on: bool = True) -> Tensor:
    """`(1, b, 1)`: each window's RMS over its observed points `x` `(k, b, 2)` (ones if not `on`).

    Read from the observed points only, so a prediction never depends on what
    it predicts.
    """
    if not on:
        return torch.ones(1, x.shape[1], 1, dtype=x.dtype, device=x.device)
    return x.pow(2).mean((0, 2)).sqrt().clamp_min(1e-6)[None, :, None]


class ODEVAE(nn.Module):
    """The latent ODE: encode (x, t) to q(z0), solve dz/dt = f(z) from z0, decode each z(t).

    The decoder solves with `odecore.NeuralODE` on each sample's grid and
    backpropagates through the solver (`adjoint=False`): exact gradients of
    the computed loss, and cheap at one step per grid interval.
    """

    kind = "Latent ODE"

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = RNNEncoder(cfg.obs_dim, cfg.rnn_hidden, cfg.latent_dim)
        self.ode = NeuralODE(LatentODEF(cfg.latent_dim, cfg.ode_hidden, cfg.ode_layers),
                             method=cfg.method, h_max=cfg.h_max, adjoint=False)
        self.readout = _mlp([cfg.latent_dim, cfg.dec_hidden, cfg.obs_dim])

    def encode(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z0 | x), `(b, latent_dim)` each."""
        return self.encoder(x, t)

    def latent_path(self, z0: Tensor, t: Tensor) -> Tensor:
        """z(t) `(T, b, latent_dim)` from z0 at t[0]."""
        return self.ode(z0, t, return_whole_sequence=True)

    def decode(self, z0: Tensor, t: Tensor) -> Tensor:
        return self.readout(self.latent_path(z0, t))

    def forward(self, x: Tensor, t: Tensor, t_grid: Tensor, sample: bool = True
                ) -> tuple[Tensor, Tensor]:
        """Predictions on `t_grid` and the KL of q(z0 | x) from N(0, I) per sample `(b,)`."""
        s = window_scale(x, self.cfg.normalise)
        mean, log_var = self.encode(x / s, t)
        z0 = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if sample else mean
        kl = 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).sum(-1)
        return self.decode(z0, t_grid) * s, kl

    @torch.no_grad()
    def predict(self, x: Tensor, t: Tensor, t_grid: Tensor) -> Tensor:
        """Decode the posterior mean of z0 on `t_grid`."""
        return self.decode(self.code(x, t), t_grid) * window_scale(x, self.cfg.normalise)

    @torch.no_grad()
    def code(self, x: Tensor, t: Tensor) -> Tensor:
        """z0's posterior mean: what notebook 04 walks and the classifier reads."""
        return self.encode(x / window_scale(x, self.cfg.normalise), t)[0]


# ---------------------------------------------------------------------------
# 4. The RNN baseline
# ---------------------------------------------------------------------------
class RNNBaseline(nn.Module):
    """The latent ODE with its ODE replaced by a GRU that is fed the time gaps.

    The same backwards GRU encoder gives a code of the latent ODE's size (the
    counterpart of z0: deterministic, so no KL). A linear map makes it the
    initial state of a GRU cell that steps from grid time to grid time,
    reading the previous output and the gap to the next time, and adds a
    change to the output (x_i = x_{i-1} + out(h_i)), the discrete counterpart
    of integrating dx/dt. Trained and evaluated on the same grid as the
    latent ODE, so it never meets a step size it was not trained on.
    """

    kind = "RNN"

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = RNNEncoder(cfg.obs_dim, cfg.rnn_hidden, cfg.latent_dim)
        self.code2h = nn.Linear(cfg.latent_dim, cfg.rnn_hidden)
        self.h2x = nn.Linear(cfg.rnn_hidden, cfg.obs_dim)
        self.cell = nn.GRUCell(cfg.obs_dim + 1, cfg.rnn_hidden)
        self.out = nn.Linear(cfg.rnn_hidden, cfg.obs_dim)

    def hidden_path(self, code: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder's states `(T, b, rnn_hidden)` and outputs `(T, b, obs)` on grid `t`."""
        h = torch.tanh(self.code2h(code))
        x = self.h2x(h)
        gaps = torch.zeros_like(t)
        gaps[1:] = t[1:] - t[:-1]
        hs, xs = [], []
        for i in range(t.shape[0]):
            if i:  # the first output is read from the initial state, at t0
                h = self.cell(torch.cat((x, gaps[i]), -1), h)
                x = x + self.out(h)
            hs.append(h)
            xs.append(x)
        return torch.stack(hs), torch.stack(xs)

    def decode(self, code: Tensor, t: Tensor) -> Tensor:
        return self.hidden_path(code, t)[1]

    def forward(self, x: Tensor, t: Tensor, t_grid: Tensor, sample: bool = True
                ) -> tuple[Tensor, Tensor]:
        s = window_scale(x, self.cfg.normalise)
        code = self.encoder(x / s, t)[0]
        return self.decode(code, t_grid) * s, torch.zeros(x.shape[1], device=x.device)

    @torch.no_grad()
    def predict(self, x: Tensor, t: Tensor, t_grid: Tensor) -> Tensor:
        return self.decode(self.code(x, t), t_grid) * window_scale(x, self.cfg.normalise)

    @torch.no_grad()
    def code(self, x: Tensor, t: Tensor) -> Tensor:
        return self.encoder(x / window_scale(x, self.cfg.normalise), t)[0]


MODELS = {"Latent ODE": ODEVAE, "RNN": RNNBaseline}


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gaussian_nll(x: Tensor, x_p: Tensor, noise_std: float) -> Tensor:
    """-log N(x | x_p, sigma^2 I) up to a constant, summed over time and dims: `(b,)`."""
    return 0.5 * ((x - x_p) ** 2).sum(-1).sum(0) / noise_std ** 2


def elbo_loss(x: Tensor, x_p: Tensor, kl: Tensor, noise_std: float, kl_weight: float = 1.0
              ) -> Tensor:
    """The negative ELBO per observed point: (NLL + w KL), averaged over the batch, / k.

    With w = 1 this is the ELBO. (The post added the KL with the wrong sign
    and dropped its 1/2.) The RNN's loss is the same with kl = 0.
    """
    return (gaussian_nll(x, x_p, noise_std) + kl_weight * kl).mean() / x.shape[0]


# ---------------------------------------------------------------------------
# 5. Training
# ---------------------------------------------------------------------------
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
    extra: dict = field(default_factory=dict)


def train_config(budget: str, dataset: str = "paper") -> TrainConfig:
    """Each budget's training settings, for the paper's or the post's spirals.

    smoke: a few iterations, to check that everything runs; quick: about 2 to 3
    minutes a model on one core of the project's CPU; full: four times quick.
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
    iters = {"smoke": 10, "quick": 1500, "full": 6000}
    if budget not in iters:
        raise ValueError(f"unknown budget {budget!r}; use one of smoke, quick, full")
    if dataset not in ("paper", "post"):
        raise ValueError(f"unknown dataset {dataset!r}; use paper or post")
    n = iters[budget]
    return TrainConfig(iters=n, kl_warmup=n // 5, frame_every=max(5, n // 20), horizon=100,
                       max_abs=10.0 if dataset == "post" else None, warm_method="euler")


def _cosine(optim, iters: int, final: float):
    cos = lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iters) / iters))
    return torch.optim.lr_scheduler.LambdaLR(optim, lambda i: final + (1 - final) * cos(i))


def _progress(n: int, desc: str, enabled: bool):
    """A progress bar over range(n) (`nbutils.progress`), or the plain range."""
    return progress(range(n), desc=desc, mininterval=10.0) if enabled else range(n)


def train_model(model: nn.Module, data: SpiralData, cfg: TrainConfig,
                callback: Callable | None = None, progress: bool = False,
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
    longer schedule would still help.
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
        for i in _progress(cfg.iters, model.kind, progress):
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
              callback: Callable | None = None, progress: bool = False
              ) -> tuple[nn.Module, dict]:
    """`new_model` then `train_model`: one job for `run_parallel`."""
    model = new_model(kind, mcfg, seed, device)
    hist = train_model(model, data, cfg, callback=callback, progress=progress, monitor=monitor)
    return model, hist


class _Done:
    """A finished result with the `result()` of a future (the job ran in this process)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _one_thread(fn, args):
    # A forked child must not enter the parent's OpenMP thread pool (it would wait
    # forever for threads that were not copied): one thread, no parallel regions.
    torch.set_num_threads(1)
    return fn(*args)


def _pool(workers: int, fn: Callable) -> ProcessPoolExecutor | None:
    """A pool of worker processes where `nbutils.start_method` finds that safe, else None.

    Forked workers on Linux; spawned ones on macOS and Windows (`fn` and its
    arguments must then be importable and picklable, as `train_new`'s are);
    None (run in turn) on a GPU, on one core, or with torch on several threads.
    """
    return worker_pool(workers, fn, get_device())


def submit(fn: Callable, *args) -> Future | _Done:
    """Run `fn(*args)` on a spare core and return a future; in turn where there is none.

    The spiral models are small and single-threaded, so a second CPU core
    trains a second model at the same time (`_pool` says how). On a GPU or
    with one core, `fn` runs here and now. Jobs must take their
    randomness from their arguments (seeds), so both paths give one result.
    """
    pool = _pool(min(2, os.cpu_count() or 1), fn)
    if pool is None:
        return _Done(fn(*args))
    future = pool.submit(_one_thread, fn, args)
    pool.shutdown(wait=False)  # the worker finishes its one job, then exits
    return future


def run_parallel(fn: Callable, jobs: Sequence[tuple], workers: int | None = None) -> list:
    """`[fn(*args) for args in jobs]`, one job a core (in turn on a GPU or one core)."""
    pool = _pool(workers or os.cpu_count() or 1, fn)
    if pool is None:
        return [fn(*args) for args in jobs]
    with pool:
        return list(pool.map(_one_thread, [fn] * len(jobs), jobs))


# ---------------------------------------------------------------------------
# 6. Evaluation
# ---------------------------------------------------------------------------
def rmse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Root mean squared error over times, samples and coordinates (where `mask` `(T, b)`)."""
    sq = ((pred - target) ** 2).mean(-1)
    if mask is not None:
        sq = sq[mask]
    return float(sq.mean().sqrt())


def trivial_predict(b: Batch) -> Tensor:
    """The trivial predictor: each window's mean of its observed points, at every grid time."""
    return b.x_obs.mean(0, keepdim=True).expand(b.t_grid.shape[0], -1, -1)


def origin_predict(b: Batch) -> Tensor:
    """Predict the origin everywhere: where the post's decaying spirals end up."""
    return torch.zeros_like(b.x_true)


def linear_fit_predict(b: Batch) -> Tensor:
    """A reference that knows the post's spirals are linear: fit dx/dt = W x, then solve.

    W is a least-squares fit of the finite differences between consecutive
    observations, (x_{i+1} - x_i) / (t_{i+1} - t_i) = W (x_i + x_{i+1}) / 2, per
    window; the prediction is expm(W (t - t_0)) x_0 from the first observation.
    Coarse differences (few observations, fast turning) can make a fit grow;
    such a W is shifted by -max(Re eig) I to neutral stability, because the
    reference also knows that the spirals do not grow.
    """
    x, t = b.x_obs.double(), b.t_obs.double()
    dx = (x[1:] - x[:-1]) / (t[1:] - t[:-1])
    mid = (x[1:] + x[:-1]) / 2
    W = torch.linalg.lstsq(mid.transpose(0, 1), dx.transpose(0, 1)).solution.transpose(1, 2)
    growth = torch.linalg.eigvals(W).real.max(-1).values.clamp(min=0)
    W = W - growth[:, None, None] * torch.eye(2, dtype=W.dtype, device=W.device)
    tau = (b.t_grid.double() - t[:1]).reshape(b.t_grid.shape[0], -1, 1, 1)
    E = torch.linalg.matrix_exp(W[None] * tau)
    return torch.einsum("gnij,nj->gni", E, x[0]).to(b.x_true.dtype)


@torch.no_grad()
def known_curves_predict(b: Batch, cfg: PaperSpiralConfig = PaperSpiralConfig()) -> Tensor:
    """The noise-limited floor on the paper's spirals: an estimator that knows both curves.

    It fits only what the data leave open, the direction and the start, by
    least squares over every start on the curves' grid (where the windows do
    start): the best any model can do from these noisy observations. Its error
    against the noise-free truth is what the noise alone costs.
    """
    curves = paper_spiral_curves(cfg)[0].to(b.x_obs.device, b.x_obs.dtype)  # (2, N, 2)
    G, n = b.t_grid.shape[0], b.x_obs.shape[1]
    starts = torch.arange(curves.shape[1] - G + 1, device=b.x_obs.device)    # (S,)
    pts = curves[:, starts[:, None, None] + b.idx[None]]                      # (2, S, k, n, 2)
    best = ((pts - b.x_obs) ** 2).sum((2, 4)).reshape(-1, n).argmin(0)       # over (d, start)
    d, start = best // len(starts), best % len(starts)
    return curves[d[None].expand(G, n), start[None] + torch.arange(G, device=d.device)[:, None]]


REFERENCES = {"trivial": trivial_predict, "origin": origin_predict,
              "linear fit": linear_fit_predict, "noise floor": known_curves_predict}


def score(pred: Tensor, b: Batch, horizon: int | None = None) -> dict:
    """Interpolation (inside the observed span) and extrapolation (next `horizon`) RMSE."""
    ext = extrapolation_positions(b, horizon)
    return {"interpolation": rmse(pred, b.x_true, span_mask(b)),
            "extrapolation": rmse(gather_time(pred, ext), gather_time(b.x_true, ext))}


@torch.no_grad()
def evaluate(models: dict, data: SpiralData, ks: Sequence[int] = (30, 50, 100),
             window: int = 100, horizon: int = 100, seed: int = 1234,
             references: Sequence[str] = ("trivial",)) -> dict:
    """The paper's protocol on held-out samples, for each k and model (and the trivial one).

    Observe k of each sample's first `window` points (irregularly, always the
    first), predict on the grid of `window + horizon` points, and score against
    the noise-free truth: "interpolation", the points from the first to the
    last observation; "extrapolation", the `horizon` points after the last
    observation (the paper's predictive RMSE). Returns
    {"rmse": {k: {model: {"interpolation", "extrapolation"}}}, "batches": {k: (b, preds)}}.
    `references` names predictors from `REFERENCES` scored beside the models.
    Held-out windows only: no training window is ever scored here.
    """
    dev = next(next(iter(models.values())).parameters()).device
    data = data.to(dev)
    out, batches = {}, {}
    for k in ks:
        b = heldout_batch(data, k, window, horizon, seed)
        preds = {name: m.predict(b.x_obs, b.t_obs, b.t_grid) for name, m in models.items()}
        preds.update({name: REFERENCES[name](b) for name in references})
        out[k] = {name: score(p, b, horizon) for name, p in preds.items()}
        batches[k] = (b, preds)
    return {"rmse": out, "batches": batches}


def linear_separability(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor
                        ) -> float:
    """Held-out accuracy of a linear rule (least squares on +-1 labels) fitted on other samples.

    The features are standardised with the training samples' statistics.
    """
    mu, sd = z_train.mean(0), z_train.std(0) + 1e-8
    A = lambda z: torch.cat([(z - mu) / sd, torch.ones(len(z), 1, device=z.device)], 1).double()
    target = (y_train.double() * 2 - 1)[:, None].to(z_train.device)
    w = torch.linalg.lstsq(A(z_train), target).solution
    pred = (A(z_test) @ w)[:, 0] > 0
    return float((pred.cpu() == y_test.cpu().bool()).double().mean())


def horizon_rmse(pred: Tensor, b: Batch, horizon: int | None = None) -> Tensor:
    """RMSE at each of the `horizon` steps after the last observation, over windows `(horizon,)`."""
    ext = extrapolation_positions(b, horizon)
    sq = ((gather_time(pred, ext) - gather_time(b.x_true, ext)) ** 2).mean(-1)
    return sq.mean(1).sqrt()


@torch.no_grad()
def rate_error_rmse(data: SpiralData, b: Batch, errors: Sequence[float] = (0.0, 0.05, 0.1, 0.2)
                    ) -> dict[float, float]:
    """Extrapolation RMSE on the post's spirals from the true state with W off by a fraction.

    Each held-out window is extrapolated from its true state at the window's
    start with (1 + e) W: the cost of identifying the dynamics to within e,
    before any other error.
    """
    if data.W is None:
        raise ValueError("only the post's spirals keep their dynamics W")
    W = data.W[b.sample.cpu()].double()
    x0 = data.x_true[0, b.sample.cpu()].double()
    tau = (b.t_grid - b.t_grid[:1]).cpu()
    return {e: score(true_trajectory((1 + e) * W, x0, tau).to(b.x_true), b)["extrapolation"]
            for e in errors}


@torch.no_grad()
def solver_check(model: nn.Module, b: Batch, rtol: float = 1e-6, atol: float = 1e-8) -> dict:
    """The latent ODE's predictions under its training solver and under dopri5 at `rtol`.

    A model trained with one Euler step per grid interval is an ODE model only
    if its flow survives an accurate solver: the two extrapolation RMSEs should
    agree. Returns both scores, their relative difference and dopri5's NFE.
    """
    trained = model.ode
    accurate = NeuralODE(trained.func, method="dopri5", rtol=rtol, atol=atol, adjoint=False)
    out = {"training solver": score(model.predict(b.x_obs, b.t_obs, b.t_grid), b)}
    model.ode = accurate
    try:
        out["dopri5"] = score(model.predict(b.x_obs, b.t_obs, b.t_grid), b)
        out["nfe"] = accurate.nfe_forward
    finally:
        model.ode = trained
    e0, e1 = out["training solver"]["extrapolation"], out["dopri5"]["extrapolation"]
    out["relative difference"] = abs(e1 - e0) / e0
    return out


def window_mean_separability(train: SpiralData, test: SpiralData, window: int = 100) -> float:
    """The direction accuracy of a linear rule on each window's mean point alone.

    On the paper's spirals the two directions sit at x1 = -5 and +5, so this
    trivial feature separates them: the bar a code's separability must be read against.
    """
    mean = lambda d: d.x[:window].mean(0)
    return linear_separability(mean(train), train.ccw, mean(test), test.ccw)


@torch.no_grad()
def direction_separability(model: nn.Module, train: SpiralData, test: SpiralData, k: int = 100,
                           window: int = 100, seed: int = 77) -> float:
    """How well a linear rule on z0 (or the RNN's code) tells CW from CCW on held-out windows.

    The rule is fitted on training windows' codes and scored on held-out ones.
    """
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    n = len(train)
    b_tr = observe(train.to(dev), torch.arange(n), torch.zeros(n, dtype=torch.long), k, window,
                   0, g)
    b_te = heldout_batch(test.to(dev), k, window, 0, seed)
    return linear_separability(model.code(b_tr.x_obs, b_tr.t_obs), train.ccw,
                               model.code(b_te.x_obs, b_te.t_obs), test.ccw)


def pca_2d(x: Tensor, fit: tuple[Tensor, Tensor] | None = None
           ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Project the last dim of `x` onto its first two principal axes (or `fit`'s).

    Returns the projection and `fit` = (mean, axes), to project other points
    (a walk, say) into the same plane.
    """
    if fit is None:
        flat = x.reshape(-1, x.shape[-1]).double()
        mean = flat.mean(0)
        fit = (mean, torch.linalg.svd(flat - mean, full_matrices=False).Vh[:2].T)
    mean, axes = fit
    return ((x.double() - mean) @ axes).float(), fit


COLORS = {"Latent ODE": "C3", "RNN": "C0", "trivial": "0.5"}


def plot_window(ax, b: Batch, j: int, preds: dict | None = None, horizon: int = 100,
                cmap: str = "viridis", title: str | None = None):
    """One window: the noise-free truth, the observed points coloured by time, predictions.

    Predictions are solid over the observed span and dashed over the `horizon`
    points after the last observation. Returns the scatter (for a colour bar).
    """
    last = int(b.idx[-1, j])
    end = min(last + horizon + 1, b.t_grid.shape[0])
    truth = b.x_true[:end, j].cpu()
    ax.plot(*truth.T.numpy(), color="0.6", lw=1.2, label="truth")
    sc = ax.scatter(*b.x_obs[:, j].cpu().T.numpy(), c=b.t_obs[:, j, 0].cpu().numpy(), cmap=cmap,
                    s=9, zorder=3, label=f"{b.x_obs.shape[0]} observed")
    for name, p in (preds or {}).items():
        p = p[:, j].cpu()
        ax.plot(*p[:last + 1].T.numpy(), color=COLORS.get(name, "k"), lw=1.5, label=name)
        ax.plot(*p[last:end].T.numpy(), color=COLORS.get(name, "k"), lw=1.5, ls="--")
    ax.set(xlabel="$x_1$", ylabel="$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title, fontsize=9)
    return sc


@torch.no_grad()
def dimension_sweeps(model: nn.Module, codes: Tensor, t_grid: Tensor, n: int = 7,
                     centre: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Figure 9 for every latent dimension: vary one, hold the rest at `centre`.

    `centre` defaults to the mean code; between two clusters that is a point no
    window encodes to, so pass a cluster's centre. Dimension d runs over the
    range of `codes[:, d]` in `n` steps; each code is decoded on `t_grid`
    `(G, 1, 1)` (one sample's grid). Returns `(values (D, n), turns (D, n),
    x (D, G, n, 2))`: the swept values, the winding angle of each decoding in
    turns (`winding_angle`: its sign is the direction) and the decodings.
    """
    D = codes.shape[1]
    lo, hi = codes.min(0).values, codes.max(0).values
    w = torch.linspace(0, 1, n, device=codes.device)
    values = lo[:, None] + w[None] * (hi - lo)[:, None]                      # (D, n)
    centre = codes.mean(0) if centre is None else centre
    z = centre[None, None].repeat(D, n, 1)                                   # (D, n, D)
    z[torch.arange(D), :, torch.arange(D)] = values
    x = model.decode(z.reshape(D * n, D), t_grid.expand(-1, D * n, 1))      # (G, D n, 2)
    x = x.reshape(x.shape[0], D, n, 2).permute(1, 0, 2, 3)
    turns = torch.stack([winding_angle(x[d]) for d in range(D)])
    return values, turns, x


# ---------------------------------------------------------------------------
# 7. Checkpoints
# ---------------------------------------------------------------------------
def checkpoint_path(budget: str, dataset: str = "paper") -> Path:
    """`data/checkpoints/spirals-<dataset>-<budget>.pt`: notebook 03 writes it, 04 reads it."""
    return output_dir("checkpoints") / f"spirals-{dataset}-{budget}.pt"


def save_checkpoint(path: Path, models: dict, mcfg: ModelConfig,
                    data_cfg: PaperSpiralConfig | SpiralConfig, train_cfg: TrainConfig,
                    extra: dict | None = None) -> Path:
    """The models' weights and every setting needed to rebuild them and their data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"models": {name: m.state_dict() for name, m in models.items()},
                "model_config": asdict(mcfg), "data_kind": type(data_cfg).__name__,
                "data_config": asdict(data_cfg), "train_config": asdict(train_cfg),
                "extra": extra or {}}, path)
    return path


def load_checkpoint(path: Path, device=None) -> dict:
    """Rebuild what `save_checkpoint` wrote: models (eval mode, on `device`) and settings."""
    device = device or get_device()
    blob = torch.load(Path(path), map_location=device, weights_only=False)
    mcfg = ModelConfig(**blob["model_config"])
    models = {}
    for name, state in blob["models"].items():
        models[name] = MODELS[name](mcfg).to(device)
        models[name].load_state_dict(state)
        models[name].eval()
    kind = {"PaperSpiralConfig": PaperSpiralConfig, "SpiralConfig": SpiralConfig}
    return {"models": models, "model_config": mcfg,
            "data_config": kind[blob["data_kind"]](**blob["data_config"]),
            "train_config": TrainConfig(**blob["train_config"]), "extra": blob["extra"]}


__all__ = [
    "PAPER_TABLE2", "PaperSpiralConfig", "SpiralConfig", "SpiralData", "paper_spiral_curves",
    "make_paper_spirals", "true_trajectory", "make_spirals", "make_data", "load_spirals",
    "angular_momentum", "winding_angle", "heavy_tail", "Batch", "gather_time",
    "observed_positions", "observe", "sample_batch", "training_targets", "heldout_batch",
    "span_mask", "extrapolation_positions", "time_gaps", "RNNEncoder", "LatentODEF", "ModelConfig",
    "window_scale",
    "ODEVAE", "RNNBaseline", "MODELS", "n_parameters", "gaussian_nll", "elbo_loss", "TrainConfig",
    "train_config", "train_model", "ablation_settings", "new_model", "train_new", "submit",
    "run_parallel", "rmse", "trivial_predict", "origin_predict", "linear_fit_predict",
    "known_curves_predict", "REFERENCES", "horizon_rmse", "rate_error_rmse", "solver_check",
    "window_mean_separability", "score", "evaluate", "linear_separability",
    "direction_separability", "pca_2d", "COLORS", "plot_window", "dimension_sweeps",
    "checkpoint_path", "save_checkpoint", "load_checkpoint",
]
