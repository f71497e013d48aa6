"""mnist: notebook 02's MNIST models, data and measurements.

The four classifiers of the paper's Table 1 (ODE-Net, RK-Net, ResNet, MLP)
around `odecore.ConvODEF`, MNIST as in-memory tensors, the training loop, and
the measurements around them (the memory of one training step in a fresh
process, the time of one training iteration), made with `measure`.
Notebook 02 tells the story and calls these.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import measure
import nbutils
import odecore

__all__ = [
    "Settings", "settings", "MEAN", "STD", "NAMES", "load_mnist", "conv3x3", "norm",
    "ContinuousNeuralMNISTClassifier", "ResBlock", "build_model", "random_shift",
    "batches", "train", "test_accuracy", "step_memory_mb", "step_memory_mb_fresh",
    "probe_all", "seconds_per_iteration",
]

MEAN, STD = 0.1307, 0.3081  # the post's normalisation
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NAMES = ("ODE-Net", "RK-Net", "ResNet", "MLP")


@dataclass(frozen=True)
class Settings:
    """One budget of notebook 02: data, batch and training length (iterations, or epochs
    at `full`), the training solver, and the sizes of the memory, Figure 3 and speed
    measurements."""

    n_train: int = 60000
    n_test: int = 10000
    batch: int = 64
    augment: bool = False
    iters: dict | None = None   # iterations per model, or
    epochs: dict | None = None  # epochs per model
    method: str = "rk4"
    h_max: float = 0.5
    mem_steps: tuple[int, ...] = (5, 10, 20, 50, 100, 200)
    mem_batch: int = 32
    tols: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    nfe_batch: int = 64
    ref_tol: float = 1e-9
    speed_iters: int = 10
    snap_every: int = 100


def settings(budget: str) -> Settings:
    """smoke: a few hundred images, a short pass; quick: the whole notebook in about 8
    minutes on 2 CPU cores (equal iterations for the three convolutional models); full:
    epochs and augmentation. Batch 64 unless said."""
    table = {
        "smoke": Settings(n_train=512, n_test=1000, iters=dict.fromkeys(NAMES, 8),
                          mem_steps=(5, 40), mem_batch=16, tols=(1e-1, 1e-3), nfe_batch=4,
                          ref_tol=1e-6, speed_iters=3, snap_every=2),
        "quick": Settings(iters={"ODE-Net": 1500, "RK-Net": 1500, "ResNet": 1500, "MLP": 6000}),
        # full: 8 epochs of batch 128 with random shifts, RK4 at the quick budget's two
        # steps: about 45 minutes of training on 2 CPU cores (README, results/)
        "full": Settings(batch=128, augment=True,
                         epochs={"ODE-Net": 8, "RK-Net": 8, "ResNet": 8, "MLP": 20},
                         tols=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5), nfe_batch=128,
                         speed_iters=20, snap_every=250),
    }
    return nbutils.for_budget(table, budget)


# ---------------------------------------------------------------------------
# 1. Data
# ---------------------------------------------------------------------------
def load_mnist(train: bool, n: int | None = None, device: torch.device | str = "cpu"):
    """MNIST as normalised `(n, 1, 28, 28)` images and labels, from `nbutils.data_root()`.

    Downloads only when the raw IDX files are missing (the data root may be
    read-only); says where it looked when it cannot load them.
    """
    import torchvision

    root = nbutils.data_root()
    raw = root / "MNIST" / "raw"
    have_raw = all((raw / name).exists() for name in RAW_FILES)
    try:
        ds = torchvision.datasets.MNIST(root=root, train=train, download=not have_raw)
    except Exception as err:
        raise RuntimeError(
            f"could not load MNIST: searched {raw} for {', '.join(RAW_FILES)}. "
            "Put those four IDX files there (from https://yann.lecun.com/exdb/mnist/ or any "
            "mirror), or point NODE_DATA_ROOT at a writable folder (the repo's data/ is the "
            f"default) so torchvision can download them. ({type(err).__name__}: {err})"
        ) from err
    x = ds.data[:n].float().div(255).sub(MEAN).div(STD).unsqueeze(1)
    return x.to(device), ds.targets[:n].to(device)


# ---------------------------------------------------------------------------
# 2. Models
# ---------------------------------------------------------------------------
def conv3x3(in_feats: int, out_feats: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_feats, out_feats, kernel_size=3, stride=stride, padding=1, bias=False)


def norm(dim: int) -> nn.GroupNorm:
    """GroupNorm, as the paper's code: per sample, identical in training and evaluation."""
    return nn.GroupNorm(min(32, dim), dim)


class ContinuousNeuralMNISTClassifier(nn.Module):
    """The post's name: stem (28x28 -> 64 x 6x6) -> feature block -> head."""

    def __init__(self, feature: nn.Module):
        super().__init__()
        self.downsampling = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1), norm(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1), norm(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1),
        )
        self.feature = feature
        self.head = nn.Sequential(norm(64), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.feature(self.downsampling(x)))


class ResBlock(nn.Module):
    """h + f(h), f being ConvODEF's layers without the time channel."""

    def __init__(self, dim: int):
        super().__init__()
        self.f = nn.Sequential(conv3x3(dim, dim), nn.ReLU(inplace=True), norm(dim),
                               conv3x3(dim, dim), nn.ReLU(inplace=True), norm(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f(x)


def build_model(name: str, method: str = "rk4", h_max: float = 0.5, rtol: float = 1e-5,
                atol: float = 1e-7) -> nn.Module:
    """One of Table 1's classifiers, in the channels_last layout.

    ODE-Net: `NeuralODE(ConvODEF(64))` over [0, 1], gradients by the adjoint;
    RK-Net: the same, autograd through the solver; ResNet: 6 residual blocks;
    MLP: 784 -> 300 -> 10. (channels_last: on the CPU oneDNN's convolutions with
    65 input channels are faster in that layout; on a GPU it is harmless.)
    """
    if name in ("ODE-Net", "RK-Net"):
        ode = odecore.NeuralODE(odecore.ConvODEF(64), method=method, h_max=h_max, rtol=rtol,
                                atol=atol, adjoint=(name == "ODE-Net"))
        model = ContinuousNeuralMNISTClassifier(ode)
    elif name == "ResNet":
        model = ContinuousNeuralMNISTClassifier(nn.Sequential(*[ResBlock(64) for _ in range(6)]))
    elif name == "MLP":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(inplace=True),
                              nn.Linear(300, 10))
    else:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(NAMES)}")
    return model.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------
# 3. Training
# ---------------------------------------------------------------------------
def random_shift(x: Tensor, pad: int = 2) -> Tensor:
    """Shift each image by up to `pad` pixels each way, filling with black."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), value=-MEAN / STD)
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    return xp[torch.arange(n, device=x.device).view(n, 1, 1), 0, rows, cols].unsqueeze(1)


def batches(n: int, batch: int, iters: int, seed: int) -> Iterator[Tensor]:
    """`iters` batches of indices into n items, a new permutation every epoch."""
    if n < batch:
        raise ValueError(f"{n} items cannot fill a batch of {batch}")
    g = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            if done == iters:
                return
            yield perm[i:i + batch]
            done += 1


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(model: nn.Module, X: Tensor, Y: Tensor, iters: int, lr: float, batch: int = 64,
          seed: int = 0, augment: bool = False, snap_every: int | None = None,
          desc: str | None = None, held_out: tuple[Tensor, Tensor] | None = None,
          eval_every: int = 100) -> dict:
    """Adam with a one-cycle schedule for `iters` iterations of cross-entropy.

    Returns the losses, the training seconds, the iterations, the block's NFE
    (forward, backward) if it has a `NeuralODE` feature block, and, with
    `snap_every`, `(iteration, weights)` snapshots (first and last included).
    With `held_out=(X, Y)`, also `held_out_loss`: `(iteration, mean loss)` every
    `eval_every` iterations and at the end, so a curve shows over- or under-fitting
    (its evaluations are not counted in the training seconds).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters)
    model.train()
    losses, snapshots = [], []
    bar = nbutils.progress(batches(len(X), batch, iters, seed), total=iters, desc=desc,
                           mininterval=2)  # few redraws: small saved outputs
    held, evaluating = [], 0.0
    start = time.perf_counter()
    for it, idx in enumerate(bar):
        if snap_every and it % snap_every == 0:
            snapshots.append((it, _snapshot(model)))
        if held_out is not None and it % eval_every == 0:
            t0 = time.perf_counter()
            held.append((it, held_out_loss(model, *held_out)))
            evaluating += time.perf_counter() - t0
        idx = idx.to(X.device)
        x = random_shift(X[idx]) if augment else X[idx]
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if it % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
    if X.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start - evaluating
    if snap_every:
        snapshots.append((iters, _snapshot(model)))
    block = getattr(model, "feature", None)
    nfe = ((block.nfe_forward, block.nfe_backward) if isinstance(block, odecore.NeuralODE)
           else (0, 0))
    if held_out is not None:
        held.append((iters, held_out_loss(model, *held_out)))
    return dict(losses=losses, seconds=seconds, iters=iters, nfe=nfe, snapshots=snapshots,
                held_out_loss=held)


@torch.no_grad()
def held_out_loss(model: nn.Module, X: Tensor, Y: Tensor, batch: int = 1000) -> float:
    """Mean cross-entropy on (X, Y) in evaluation mode; the model is left in the mode
    it was in."""
    was_training = model.training
    model.eval()
    total = sum(float(F.cross_entropy(model(X[i:i + batch].contiguous(
        memory_format=torch.channels_last)), Y[i:i + batch], reduction="sum"))
        for i in range(0, len(X), batch))
    model.train(was_training)
    return total / len(X)


@torch.no_grad()
def test_accuracy(model: nn.Module, X: Tensor, Y: Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(X[i:i + batch]).argmax(1) == Y[i:i + batch]).sum())
                  for i in range(0, len(X), batch))
    return correct / len(X)


# ---------------------------------------------------------------------------
# 4. Measurements
# ---------------------------------------------------------------------------
def step_memory_mb(name: str, batch: int, kw: dict, device: torch.device | str = "cpu") -> float:
    """Extra peak memory (MB) of one forward-backward step of `build_model(name, **kw)`.

    A warm-up step with a one-step solver first (kernels, allocator pools). On
    the CPU, call it in a fresh process (`step_memory_mb_fresh`): a process that
    measured a larger configuration before keeps that memory.
    """
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step(model):
        F.cross_entropy(model(x), y).backward()

    warm = dict(kw, method="euler", h_max=1.0) if name in ("ODE-Net", "RK-Net") else kw
    step(build_model(name, **warm).to(device))
    model = build_model(name, **kw).to(device)
    return measure.peak_memory_mb(lambda: step(model), device)


def step_memory_mb_fresh(name: str, batch: int, kw: dict,
                         device: torch.device | str = "cpu") -> float:
    """`step_memory_mb` measured honestly: in a fresh Python process on the CPU
    (`measure.in_fresh_process`). On a GPU the allocator's own peak is exact, so
    it runs in this process."""
    if torch.device(device).type == "cuda":
        return step_memory_mb(name, batch, kw, device)
    return float(measure.in_fresh_process("mnist:step_memory_mb", name, batch, kw))


def probe_all(jobs: dict, device: torch.device | str = "cpu", desc: str | None = None) -> dict:
    """`{key: (name, batch, kw)}` -> `{key: MB}`; CPU probes run in parallel, one per core.

    Separate processes, so their peaks do not mix. A progress bar when `desc` is given.
    """
    workers = 1 if torch.device(device).type == "cuda" else min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        futures = {k: pool.submit(step_memory_mb_fresh, n, b, kw, device)
                   for k, (n, b, kw) in jobs.items()}
        return {k: f.result()
                for k, f in nbutils.progress(futures.items(), desc=desc, disable=desc is None)}


def seconds_per_iteration(X: Tensor, Y: Tensor, n: int = 20, threads: int | None = None,
                          batch: int = 32, warmup: int = 3, **kw) -> tuple[float, int, int]:
    """Median seconds of one ODE-Net training iteration (forward, backward, Adam step).

    At the post's setting by default (batch 32, Euler, 20 steps, adjoint);
    `threads` sets torch's thread count for the measurement only. Returns
    (seconds, forward NFE, backward NFE) of the last iteration.
    """
    kw = dict(dict(method="euler", h_max=0.05), **kw)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = build_model("ODE-Net", **kw).to(X.device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        data = iter([(X[i].contiguous(memory_format=torch.channels_last), Y[i])
                     for i in (idx.to(X.device)
                               for idx in batches(len(X), batch, n + warmup, seed=0))])

        def iteration():
            x, y = next(data)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        s = measure.seconds(iteration, repeats=n, warmup=warmup)  # warm-up: caches
        return s, model.feature.nfe_forward, model.feature.nfe_backward
    finally:
        torch.set_num_threads(old)
