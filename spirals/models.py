"""The latent ODE (encoder, dynamics, decoder, ELBO) and the RNN baseline beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from odecore import ODEF, NeuralODE

__all__ = [
    "time_gaps", "RNNEncoder", "LatentODEF", "ModelConfig", "window_scale", "SequenceModel",
    "ODEVAE", "RNNBaseline", "MODELS", "gaussian_nll", "elbo_loss",
]


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


class SequenceModel(nn.Module):
    """What the latent ODE and the RNN share, and all that training, evaluation and
    notebook 04 ask of a model.

    Both read the observations with the same encoder into a code of
    `cfg.latent_dim` numbers and decode it on a time grid. A subclass sets
    `kind` and writes `decode(code, t)` and `forward(x, t, t_grid, sample)`
    (predictions and the KL per sample, zero for a deterministic code). Each
    window is divided by its RMS on the way in and multiplied back on the way
    out when `cfg.normalise` is set (`window_scale`).
    """

    kind = ""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = RNNEncoder(cfg.obs_dim, cfg.rnn_hidden, cfg.latent_dim)

    def decode(self, code: Tensor, t: Tensor) -> Tensor:
        """Predictions `(T, b, obs_dim)` on grid `t` from a code `(b, latent_dim)`."""
        raise NotImplementedError

    @torch.no_grad()
    def code(self, x: Tensor, t: Tensor) -> Tensor:
        """The code of observations (x, t): for the latent ODE, z0's posterior mean,
        what notebook 04 walks and the direction classifier reads."""
        return self.encoder(x / window_scale(x, self.cfg.normalise), t)[0]

    @torch.no_grad()
    def predict(self, x: Tensor, t: Tensor, t_grid: Tensor) -> Tensor:
        """Decode the code of (x, t) on `t_grid`."""
        return self.decode(self.code(x, t), t_grid) * window_scale(x, self.cfg.normalise)


class ODEVAE(SequenceModel):
    """The latent ODE: encode (x, t) to q(z0), solve dz/dt = f(z) from z0, decode each z(t).

    The decoder solves with `odecore.NeuralODE` on each sample's grid and
    backpropagates through the solver (`adjoint=False`): exact gradients of
    the computed loss, and cheap at one step per grid interval.
    """

    kind = "Latent ODE"

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__(cfg)
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


class RNNBaseline(SequenceModel):
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
        super().__init__(cfg)
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


MODELS: dict[str, type[SequenceModel]] = {"Latent ODE": ODEVAE, "RNN": RNNBaseline}


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
