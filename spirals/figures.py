"""Latent-space figures: projections, held-out windows, sweeps along one dimension."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .batches import Batch
from .data import winding_angle

__all__ = [
    "pca_2d", "COLORS", "plot_window", "dimension_sweeps",
]


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
