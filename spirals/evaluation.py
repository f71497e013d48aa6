"""The paper's protocol: interpolation and extrapolation RMSE, references, diagnostics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from odecore import NeuralODE

from .batches import Batch, extrapolation_positions, gather_time, heldout_batch, observe, span_mask
from .data import PaperSpiralConfig, SpiralData, paper_spiral_curves, true_trajectory

__all__ = [
    "PAPER_TABLE2", "rmse", "trivial_predict", "origin_predict", "linear_fit_predict",
    "known_curves_predict", "REFERENCES", "score", "evaluate", "linear_separability",
    "horizon_rmse", "rate_error_rmse", "solver_check", "window_mean_separability",
    "direction_separability",
]


# Table 2 of Chen et al. (2018): predictive RMSE on their spirals, from k observed points.
PAPER_TABLE2 = {"RNN": {30: 0.3937, 50: 0.3202, 100: 0.1813},
                "Latent ODE": {30: 0.1642, 50: 0.1502, 100: 0.1346}}


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
def known_curves_predict(b: Batch, cfg: PaperSpiralConfig | None = None) -> Tensor:
    """The noise-limited floor on the paper's spirals: an estimator that knows both curves.

    It fits only what the data leave open, the direction and the start, by
    least squares over every start on the curves' grid (where the windows do
    start): the best any model can do from these noisy observations. Its error
    against the noise-free truth is what the noise alone costs.
    """
    curves = paper_spiral_curves(cfg or PaperSpiralConfig())[0]                 # (2, N, 2)
    curves = curves.to(b.x_obs.device, b.x_obs.dtype)
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
