"""The two spiral datasets: the paper's (its authors' example) and the post's, cached."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from nbutils import output_dir

__all__ = [
    "PaperSpiralConfig", "SpiralConfig", "SpiralData", "paper_spiral_curves",
    "make_paper_spirals", "true_trajectory", "make_spirals", "make_data", "load_spirals",
    "angular_momentum", "winding_angle", "heavy_tail",
]


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
