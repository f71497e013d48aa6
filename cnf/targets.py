"""What the flows learn: the energy targets of Rezende & Mohamed (2015), two 2-D
data sets, a density grid, and the standard normal base density."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "LOG_2PI", "energy_ring", "energy_wave", "energy_split_wave", "ENERGIES", "grid_points",
    "energy_normalizer", "DATASETS", "make_data", "standard_normal_logprob",
]


LOG_2PI = math.log(2 * math.pi)


def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _box(z: Tensor) -> Tensor:
    # U2 and U3 do not depend on z1 far out, so exp(-U) would not integrate; Rezende and
    # Mohamed plot them on [-4, 4]^2. This soft wall at |z1| = 4 makes them normalisable.
    return 0.5 * (z[:, 0] / 4) ** 8


def energy_ring(z: Tensor) -> Tensor:
    """U1: a ring of radius 2 with two modes, at z1 = +-2."""
    r = z.norm(dim=1)
    modes = torch.logsumexp(torch.stack([-0.5 * ((z[:, 0] - 2) / 0.6) ** 2,
                                         -0.5 * ((z[:, 0] + 2) / 0.6) ** 2]), 0)
    return 0.5 * ((r - 2) / 0.4) ** 2 - modes


def energy_wave(z: Tensor) -> Tensor:
    """U2: a sine wave, z2 = sin(pi z1 / 2), within a soft box |z1| < 4."""
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2 + _box(z)


def energy_split_wave(z: Tensor) -> Tensor:
    """U3: the wave and a copy of it displaced near z1 = 1, within a soft box."""
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w2(z)) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), 0) + _box(z)


ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {
    "ring": energy_ring, "wave": energy_wave, "split wave": energy_split_wave}


def grid_points(lim: float = 4.0, n: int = 200, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """(n*n, 2) points of a square grid on [-lim, lim]^2 and the area of one cell."""
    xs = torch.linspace(-lim, lim, n, dtype=dtype)
    X, Y = torch.meshgrid(xs, xs, indexing="xy")
    return torch.stack([X.flatten(), Y.flatten()], 1), float(xs[1] - xs[0]) ** 2


def energy_normalizer(energy: Callable[[Tensor], Tensor], lim: float = 7.0,
                      n: int = 1401) -> float:
    """log Z = log of the integral of exp(-U) on a fine grid, so that KL(q||p) is in nats."""
    pts, area = grid_points(lim, n, torch.float64)
    return float(torch.logsumexp(-energy(pts), 0) + math.log(area))


# Noise relative to size as in FFJORD's toy data (scikit-learn's make_circles with factor 0.5
# and noise 0.08, scaled by 3; make_moons with noise 0.1, scaled by 2).
def _two_circles(n: int, gen: torch.Generator) -> Tensor:
    r = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, 2.0)
    angle = 2 * math.pi * torch.rand(n, generator=gen)
    x = torch.stack([r * angle.cos(), r * angle.sin()], 1)
    return x + 0.16 * torch.randn(n, 2, generator=gen)


def _two_moons(n: int, gen: torch.Generator) -> Tensor:
    upper = torch.rand(n, generator=gen) < 0.5
    angle = math.pi * torch.rand(n, generator=gen)
    x = torch.where(upper[:, None], torch.stack([angle.cos(), angle.sin()], 1),
                    torch.stack([1 - angle.cos(), 0.5 - angle.sin()], 1))
    x = x + 0.1 * torch.randn(n, 2, generator=gen)
    return (x - torch.tensor([0.5, 0.25])) * 2.0  # centred, about as wide as the circles


DATASETS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "two circles": _two_circles, "two moons": _two_moons}


def make_data(name: str, n: int, seed: int) -> Tensor:
    """n points of a 2-D data set (float32), reproducible from the seed."""
    return DATASETS[name](n, torch.Generator().manual_seed(seed))


def standard_normal_logprob(z: Tensor) -> Tensor:
    """log N(z; 0, I), one value per row."""
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * LOG_2PI)
