"""nbutils: what the notebooks need around the ODE machinery.

The budget (`NODE_BUDGET`), the device, where data and outputs go, seeding,
plots and GIFs, and measuring memory. None of it is about ODEs: that is
`odecore.py`'s job.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "REPO_ROOT", "BUDGETS", "get_device", "get_budget", "data_root", "output_dir",
    "seed_everything", "peak_memory_mb", "plot_trajectories", "figure_to_image", "save_gif",
]

BUDGETS = ("smoke", "quick", "full")
REPO_ROOT = Path(__file__).resolve().parent


def get_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU: the same code runs on both."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_budget(default: str = "quick") -> str:
    """The run size from `NODE_BUDGET` (smoke, quick or full)."""
    budget = os.environ.get("NODE_BUDGET", default).strip().lower()
    if budget not in BUDGETS:
        raise ValueError(
            f"NODE_BUDGET={budget!r} is not a budget; use one of {', '.join(BUDGETS)}")
    return budget


def data_root() -> Path:
    """Where datasets are read from: `NODE_DATA_ROOT`, else the repo's `data/`.

    May be read-only (the Makefile points it at a shared copy of MNIST).
    """
    return Path(os.environ.get("NODE_DATA_ROOT") or REPO_ROOT / "data").resolve()


def output_dir(*parts: str) -> Path:
    """A writable folder under the repo's `data/` for caches and checkpoints."""
    path = REPO_ROOT.joinpath("data", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Memory (MB) that `fn()` adds at its peak, above what was in use before it.

    On CUDA: the caching allocator's peak. On the CPU (Linux): the resident-set
    high-water mark, reset just before the call. Memory an earlier call freed
    but the allocator kept can hide part of the peak, so measure in a fresh
    process after a small warm-up (notebook 02 and the benchmarks do).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    status = Path("/proc/self/status")
    if not status.exists():
        raise RuntimeError("peak_memory_mb needs Linux's /proc on the CPU")

    def read(key: str) -> int:  # kB
        for line in status.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        raise RuntimeError(f"{key} not in /proc/self/status")
    base = read("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    return (read("VmHWM:") - base) / 1024


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def plot_trajectories(obs=None, times=None, trajs=None, ax=None, title: str | None = None):
    """The post's plot: observations coloured by time, trajectories as lines.

    `obs`, `trajs`: lists of `(T, batch, 2)` arrays; `times`: matching `(T, batch, 1)`.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    if obs is not None:
        times = times if times is not None else [None] * len(obs)
        for o, tt in zip(obs, times):
            o = _np(o)
            c = None if tt is None else _np(tt)[..., 0].ravel()
            ax.scatter(o[..., 0].ravel(), o[..., 1].ravel(), c=c, s=8, cmap="cividis")
    if trajs is not None:
        for z in trajs:
            z = _np(z)
            for b in range(z.shape[1]):
                ax.plot(z[:, b, 0], z[:, b, 1], lw=1.5)
    if title:
        ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def figure_to_image(fig):
    """A matplotlib figure as a Pillow image (a GIF frame)."""
    from PIL import Image

    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")


def save_gif(frames: list, path: str | Path, fps: float = 5.0) -> Path:
    """Write Pillow images (or matplotlib figures) as a looping GIF."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    images = [f if hasattr(f, "save") and not hasattr(f, "canvas") else figure_to_image(f)
              for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=0)
    return path
