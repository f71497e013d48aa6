"""Windows with k of their points observed, irregularly, and the positions the protocol scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .data import SpiralData

__all__ = [
    "Batch", "gather_time", "observed_positions", "observe", "sample_batch",
    "training_targets", "heldout_batch", "span_mask", "extrapolation_positions",
]


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
