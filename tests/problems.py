"""Test problems with answers known independently of odecore, shared by the tests and the
benchmark (as torchdiffeq's `tests/problems.py`): the linear problem and its exact
gradients, `Squash`, and the relative error every comparison reports.

The benchmark imports this module too (`make bench` puts `tests/` on its path).
"""

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

import measure
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
