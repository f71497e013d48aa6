"""nbutils: what the notebooks need around the ODE machinery.

The budget (`NODE_BUDGET`), the device, where data and outputs go, seeding,
progress bars, plots and GIFs, measuring memory, and describing the run. None
of it is about ODEs: that is `odecore.py`'s job.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "REPO_ROOT", "BUDGETS", "Setup", "setup", "get_device", "get_budget", "for_budget",
    "data_root", "output_dir",
    "seed_everything", "n_parameters", "cpu_name", "progress", "progress_mode",
    "run_summary", "markdown", "RECORDS", "save_record", "load_record", "headline_numbers",
    "plot_trajectories", "figure_to_image", "save_gif",
]

BUDGETS = ("smoke", "quick", "full")
PROGRESS_MODES = ("auto", "text", "off")
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


def for_budget(table: dict, budget: str):
    """`table[budget]`, or an error naming the budgets when `budget` is not one: each
    chapter's settings per budget are a table of this kind."""
    if budget not in table:
        raise ValueError(f"unknown budget {budget!r}; use one of {', '.join(table)}")
    return table[budget]


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


def n_parameters(model: torch.nn.Module) -> int:
    """The size the paper's tables compare models at: the count of their parameters."""
    return sum(p.numel() for p in model.parameters())


def progress_mode() -> str:
    """How progress bars draw, from `NODE_PROGRESS`: auto (default), text or off."""
    mode = os.environ.get("NODE_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"NODE_PROGRESS={mode!r} is not a progress mode; "
                         f"use one of {', '.join(PROGRESS_MODES)}")
    return mode


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, nbclient, nbval), not a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _have_ipywidgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress(iterable: Iterable | int | None = None, **kwargs):
    """A tqdm progress bar over `iterable` (or, given an int, of that `total`).

    Takes tqdm's keyword arguments (`desc`, `total`, `leave`, `disable`, ...) and
    draws the bar where it reads best, set by `NODE_PROGRESS`:

    * `auto` (the default): in a Jupyter kernel with ipywidgets installed, the
      widget bar that `tqdm.auto` draws in JupyterLab; in a kernel without
      ipywidgets, text bars on stdout; in a terminal, tqdm's text bar on stderr.
    * `text`: tqdm's text bar on **stdout**. `make run` (scripts/run_notebooks.py)
      and `make test` (nbval) set it. A kernel has no frontend to draw widgets
      there, and a widget saved in a notebook is a state blob that GitHub cannot
      show. On stdout, the bar and the cell's prints travel in one stream, in
      order: on stderr, the newline tqdm writes when it closes can reach the
      notebook after the next print, as an empty stderr output of its own (the
      pink band JupyterLab draws), and the bar itself is drawn on pink. The
      runner keeps only the last redraw of each line.
    * `off`: no bars.
    """
    if isinstance(iterable, int):
        kwargs.setdefault("total", iterable)
        iterable = None
    mode = progress_mode()
    if mode == "off":
        kwargs["disable"] = True
    in_kernel = _in_jupyter_kernel()
    if mode == "auto" and in_kernel and _have_ipywidgets():
        from tqdm.notebook import tqdm as widget_bar

        return widget_bar(iterable, **kwargs)
    from tqdm.std import tqdm as text_bar

    if mode == "text" or in_kernel:
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("mininterval", 1.0)  # fewer redraws to send to the notebook
    return text_bar(iterable, **kwargs)


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Setup(NamedTuple):
    """What `setup` decided: the budget, the device, and where the figures go."""

    budget: str
    device: torch.device
    assets: Path


SAVE_DPI = 150  # the committed figures' resolution (tests/test_assets.py checks it)
_RUN: dict = {}  # what `setup` recorded (its start time included), for `run_summary`


def setup(threads: int | None = 1, seed: int = 0) -> Setup:
    """The first call of every notebook: `NODE_BUDGET, device, ASSETS = nbutils.setup()`.

    - the budget, from `NODE_BUDGET` (`get_budget`);
    - the device: the GPU where there is one (`get_device`);
    - torch's CPU threads: `threads` (the course's small models run fastest on
      one, and one makes forking workers safe); None leaves torch's default;
    - every random generator seeded with `seed`;
    - small inline figures (72 dpi keeps the committed notebooks small), saved
      figures at 150 dpi, trimmed to their content (print quality for `assets/`);
    - where figures go: `assets/` for the committed `quick` run (the README
      shows them), `data/<budget>-assets/` for the others;
    - the start of the clock that `run_summary` reads.
    """
    import matplotlib.pyplot as plt

    budget, device = get_budget(), get_device()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    seed_everything(seed)
    plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": SAVE_DPI, "savefig.bbox": "tight"})
    assets = REPO_ROOT / "assets" if budget == "quick" else output_dir(f"{budget}-assets")
    assets.mkdir(parents=True, exist_ok=True)
    _RUN.update(start=time.perf_counter(), budget=budget, device=device)
    print(f"budget {budget!r} on {device}, {torch.get_num_threads()} torch thread(s); "
          f"figures to {assets.relative_to(REPO_ROOT)}/")
    return Setup(budget, device, assets)


def run_summary() -> str:
    """'How this run was made': budget, hardware, versions, wall and CPU time, load.

    The wall time counts from `setup`. The CPU seconds count this process and its
    finished child processes (workers), so on a shared machine they show how much
    of the wall time was this run's own work.
    """
    if not _RUN:
        raise RuntimeError("run_summary reports on a run that nbutils.setup() started; "
                           "call setup() first")
    start, budget, device = _RUN["start"], _RUN["budget"], _RUN["device"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"budget {budget}, device {device}, {torch.get_num_threads()} torch thread(s), "
             f"{cores} cores; {cpu_name()}",
             f"python {platform.python_version()}, torch {torch.__version__}, "
             f"numpy {np.__version__}, {platform.system()} {platform.machine()}"]
    wall = f"time so far: {time.perf_counter() - start:.0f} s wall"
    try:
        import resource

        cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        wall += f", {cpu:.0f} s of CPU (this process and its workers)"
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        wall += f"; load average over the last 15 minutes {os.getloadavg()[2]:.1f}"
    return "\n".join(lines + [wall])


def markdown(text: str) -> None:
    """Show `text` as Markdown in the notebook, under the cell that computed its numbers.

    The notebooks' static prose says only what holds from run to run and machine to
    machine; a sentence that quotes this run's numbers is written by the run through
    this, so it always quotes the numbers printed above it. Outside IPython: printed.
    """
    import textwrap

    text = textwrap.dedent(text).strip()
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(text))
    else:
        print(text)


RECORDS = REPO_ROOT / "results"


def save_record(notebook: str, budget: str, numbers: dict, device: torch.device | str,
                directory: Path | None = None) -> Path:
    """Keep a run's headline numbers in git (`results/NOTEBOOK-BUDGET.json`).

    The notebooks are committed with a `quick` run's outputs, and their prose may
    quote only numbers that the outputs print; a `full` run's numbers reach the
    committed notebook through this record, which its `quick` run loads and prints.
    `directory` (default `results/`) lets a trial run keep its record elsewhere.
    """
    import datetime
    import json

    directory = RECORDS if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{notebook}-{budget}.json"
    record = {"notebook": notebook, "budget": budget,
              "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
              "device": str(device), "cpu": cpu_name(), "torch": torch.__version__,
              "numbers": numbers}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_record(notebook: str, budget: str) -> dict | None:
    """The record `save_record` kept for this notebook and budget, or None."""
    import json

    path = RECORDS / f"{notebook}-{budget}.json"
    return json.loads(path.read_text()) if path.exists() else None


def headline_numbers(notebook: str, budget: str) -> tuple[str, dict[str, float]] | None:
    """A notebook's one-number results for a summary: from its `budget` record, else its
    `quick` one, as (the budget they come from, {name: value}); None without either.

    Only floats count: a `full` record may hold just nested tables (notebook 03's), and a
    summary of those would need the notebook's own reading of them.
    """
    for name in dict.fromkeys((budget, "quick")):
        record = load_record(notebook, name) or {"numbers": {}}
        numbers = {k: v for k, v in record["numbers"].items() if isinstance(v, float)}
        if numbers:
            return name, numbers
    return None


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
