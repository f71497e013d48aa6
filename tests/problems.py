"""Test problems with answers known independently of odecore, shared by the tests and the
benchmark (as torchdiffeq's `tests/problems.py`): the linear problem and its exact
gradients, `Squash`, and the relative error every comparison reports.

The benchmark imports this module too (`make bench` puts `tests/` on its path).
"""

import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

import measure
import spirals as S
from measure import peak_memory_mb
from odecore import ODEF, LinearODEF, NeuralODE

A_TRUE = [[-0.1, -1.0], [1.0, -0.1]]  # a damped rotation: the post's spiral

GRIDS = {
    "shared": lambda: torch.tensor([0.0, 0.4, 1.2, 2.0], dtype=torch.float64),
    "shared-backward": lambda: torch.tensor([2.0, 1.2, 0.4, 0.0], dtype=torch.float64),
    # per-sample grids: each sample has its own times; intervals divide 0.4 evenly
    # for the first sample, which has the longest intervals.
    "per-sample": lambda: torch.tensor(
        [[0.0, 0.1, -0.3], [0.4, 0.3, -0.1], [1.2, 1.0, 0.2], [2.0, 1.5, 0.7]],
        dtype=torch.float64).unsqueeze(-1),
    "per-sample-backward": lambda: torch.tensor(
        [[2.0, 1.5, 0.7], [1.2, 1.0, 0.2], [0.4, 0.3, -0.1], [0.0, 0.1, -0.3]],
        dtype=torch.float64).unsqueeze(-1),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (Frobenius), the relative error every comparison here reports."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# --------------------------------------------------------------------------
# What the solvers guarantee, and a smooth nonlinear field
# --------------------------------------------------------------------------
@contextmanager
def time_limit(seconds: float):
    """Fail instead of hanging (pytest-timeout is not a dependency)."""
    def handler(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def observed_orders(errors):
    return [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]


# Every step-size sequence below halves h, so a method of order p divides the error by 2^p:
# the observed order is p plus the next term of the error expansion, O(h), which at these
# steps moves it by less than 0.15. +-0.3 leaves room for that term; a bug that costs an
# order (a missing stage, a stale f) moves it by 1. The errors compared are 1e-10 or more,
# a million times float64's round-off, so no CPU's rounding moves an order.
ORDER_SLACK = 0.3


def growth(A, T):
    """How much the flow of dz/dt = Az (or of the adjoint's -A^T a) can stretch a
    perturbation over a time T: e^(mu T), mu the largest eigenvalue of (A + A^T)/2."""
    mu = float(torch.linalg.eigvalsh((A + A.T) / 2).max())
    return math.exp(max(mu, 0.0) * T)


def dopri5_bound(nfe, n, rtol, atol, y_max, stretch=1.0):
    """The 2-norm error dopri5 allows over a whole solve (asymptotically, small steps).

    Each accepted step keeps the RMS of err_i / (atol + rtol |y_i|) at most 1, so its
    local error is at most sqrt(n) (atol + rtol max|y|) in the 2-norm; a solve of `nfe`
    evaluations takes at most nfe / 6 steps (six new evaluations a step); the flow carries
    each local error to the end stretched by at most `stretch`. The estimate is of the
    embedded 4th-order solution, and the 5th-order one that is kept errs less.
    """
    return nfe / 6 * math.sqrt(n) * (atol + rtol * y_max) * stretch


class TanhMLP(ODEF):
    """A smooth, time-dependent MLP field. Not NNODEF: ELU's second derivative jumps at
    0, and the adjoint's dynamics contain f's derivative, so an adaptive solver's error
    estimate fails at every kink it steps over and the error at a tolerance then depends
    on where the steps land: on the CPU's rounding (280 x rtol on one machine, 100 x on
    another). Weights scaled by 2 so that the field is not trivial for the solver."""

    def __init__(self, dim=2, hidden=16, scale=2.0):
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim + 1, hidden), nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(scale)

    def forward(self, z, t):
        z = torch.cat((z, t.expand(*z.shape[:-1], 1)), dim=-1)
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(z)))))


def rk4_linear_bound(A, T, h):
    """RK4's global error on dz/dt = Az, relative to |z0|: its one-step map is the Taylor
    polynomial of e^(hA) to degree 4, so each step errs by at most (h|A|)^5/120 e^(h|A|),
    and T/h steps carried by e^(|A| T) add up to T |A|^5 h^4 / 120 e^(|A|(T + h))."""
    a = float(torch.linalg.matrix_norm(A, 2))
    return T * a**5 * h**4 / 120 * math.exp(a * (T + h))


# --------------------------------------------------------------------------
# The linear problem: z(t) = expm(A (t - t0)) z0, differentiable exactly.
# --------------------------------------------------------------------------
def exact_path(A, z0, t):
    """(T, batch, 2) exact states for a shared (T,) or per-sample (T, batch, 1) grid."""
    if t.dim() == 1:
        E = torch.linalg.matrix_exp(A * (t - t[0]).reshape(-1, 1, 1))
        return torch.einsum("tij,bj->tbi", E, z0)
    E = torch.linalg.matrix_exp(A * (t - t[0]).unsqueeze(-1))  # (T, batch, 2, 2)
    return torch.einsum("tbij,bj->tbi", E, z0)


def problem(grid):
    """(A, z0, t, w) on one of `GRIDS`: the loss is L = sum_i <w_i, z(t_i)>."""
    torch.manual_seed(1)
    A = torch.tensor(A_TRUE, dtype=torch.float64) + 0.1 * torch.randn(2, 2, dtype=torch.float64)
    t = GRIDS[grid]()
    z0 = torch.randn(3, 2, dtype=torch.float64)
    w = torch.randn(t.shape[0], 3, 2, dtype=torch.float64)
    return A, z0, t, w


def exact_grads(A, z0, t, w):
    """dL/dz0, dL/dA, dL/dt by autograd through the matrix exponential."""
    A, z0, t = (x.clone().requires_grad_() for x in (A, z0, t))
    (exact_path(A, z0, t) * w).sum().backward()
    return z0.grad, A.grad, t.grad


def adjoint_grads(A, z0, t, w, **opts):
    """The same gradients from odecore's adjoint, `NeuralODE(LinearODEF(A), **opts)`."""
    func = LinearODEF(A)
    ode = NeuralODE(func, **opts)
    z0, t = z0.clone().requires_grad_(), t.clone().requires_grad_()
    (ode(z0, t, return_whole_sequence=True) * w).sum().backward()
    return z0.grad, func.lin.weight.grad, t.grad


# --------------------------------------------------------------------------
# Memory: a large state and a cheap step
# --------------------------------------------------------------------------
class Squash(ODEF):
    """dz/dt = tanh(z)·w: a large state and a cheap step, so memory shows and time does not."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.w = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, z, t):
        return torch.tanh(z) * self.w


def training_step_peak_mb(adjoint: bool, steps: int) -> float:
    """Peak memory (MB) one training step of `Squash` adds, through `steps` Euler steps.

    For `measure.in_fresh_process`: after a one-step warm-up (kernels, allocator).
    """
    z0 = torch.randn(256, 512, requires_grad=True)  # 0.5 MB of float32
    ode = NeuralODE(Squash(), method="euler", h_max=1.0 / steps, adjoint=adjoint)
    NeuralODE(Squash(), method="euler", h_max=1.0)(z0).sum().backward()
    return peak_memory_mb(lambda: ode(z0).sum().backward())


# --------------------------------------------------------------------------
# For measure's own tests: what a fresh process (`measure.in_fresh_process`) runs
# --------------------------------------------------------------------------
def temporary_array_peak_mb(before_mb: int = 0, resettable: bool = True,
                            sampled: bool = True) -> float:
    """peak_memory_mb of a 100 MB temporary array (run by `in_fresh_process`), after a
    `before_mb` peak, with the high-water mark's reset or the sampler switched off."""
    if before_mb:
        np.ones(before_mb * 2**20 // 8).sum()
    if not resettable:
        measure._PROC_CLEAR_REFS = Path("/nonexistent/clear_refs")
    if not sampled:
        measure._RssSampler.interval = 3600.0  # reads once, on entry
    return peak_memory_mb(lambda: np.ones(100 * 2**20 // 8).sum())


def high_water_mark_mb() -> float:
    return measure._peak_mb_proc(lambda: np.ones(50 * 2**20 // 8).sum())


def child_facts(x: int) -> list:
    return [x + 1, torch.get_num_threads(), os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.getpid()]


# --------------------------------------------------------------------------
# Small spirals and a tiny model, for tests/test_spirals_*.py (fixtures in conftest.py)
# --------------------------------------------------------------------------
SMALL = S.SpiralConfig(n_spirals=40, n_test=10, n_points=60, t_max=6.0, seed=3)
PAPER_SMALL = S.PaperSpiralConfig(n_windows=60, n_test=20, n_total=120, window=30, horizon=20,
                                  seed=5)
TINY = S.ModelConfig(rnn_hidden=8, latent_dim=3, ode_hidden=8, dec_hidden=8, method="euler",
                     h_max=0.2)
