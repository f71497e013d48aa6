"""nbutils: what the notebooks need around the ODE machinery.

The budget (`NODE_BUDGET`), the device, where data and outputs go, seeding,
progress bars, plots and GIFs, measuring memory, and describing the run. None
of it is about ODEs: that is `odecore.py`'s job.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "REPO_ROOT", "BUDGETS", "get_device", "get_budget", "data_root", "output_dir",
    "seed_everything", "start_method", "worker_pool", "cpu_name", "progress", "progress_mode",
    "peak_memory_mb", "run_summary", "markdown", "RECORDS", "save_record", "load_record",
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


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
_PROC_STATM = Path("/proc/self/statm")


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Memory (MB) that `fn()` adds at its peak, above what was in use before it.

    On CUDA: the caching allocator's peak. On the CPU two readings are combined,
    because kernels and sandboxes differ in what they keep: the resident-set
    high-water mark, reset just before the call (Linux's `/proc/self/clear_refs`),
    and the resident set sampled about every millisecond while `fn` runs (Linux's
    `/proc/self/statm`); the larger wins. The sample alone can miss a peak that
    lasts under a millisecond, the high-water mark alone reads 0 where it is not
    kept. Memory an earlier call freed but the allocator kept can hide part of
    the peak, so measure in a fresh process after a small warm-up (notebook 02
    and the benchmarks do).

    Without `/proc` (macOS, BSD) the high-water mark cannot be reset: the result
    is how far `fn()` raised the process's lifetime peak (`resource.getrusage`),
    which is `fn`'s own peak only when nothing before it in the process peaked
    higher: measure in a fresh process. A `RuntimeWarning` says so. On Windows,
    which has neither, a `RuntimeError` says the CPU cannot be measured.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not _PROC_STATM.exists():
        return _peak_mb_rusage(fn)
    with _RssSampler() as sampler:
        marked = _peak_mb_proc(fn)
    return max(marked, sampler.peak_mb)


def _peak_mb_proc(fn: Callable[[], object]) -> float:
    """The rise of VmHWM over VmRSS, reset just before `fn`; 0 where it cannot be reset."""
    def read_kb(key: str) -> int:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        raise RuntimeError(f"{key} not in {_PROC_STATUS}")
    try:
        base = read_kb("VmRSS:")
        _PROC_CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
    except OSError:  # no /proc/self/status or clear_refs, or a read-only /proc
        fn()
        return 0.0
    fn()
    return max(read_kb("VmHWM:") - base, 0) / 1024


class _RssSampler:
    """Reads the resident set every `interval` seconds in a thread; `peak_mb` is
    the largest rise over the reading taken on entry. numpy and torch release the
    GIL in their kernels, so the thread runs while they work."""

    interval = 5e-4  # seconds

    def __init__(self) -> None:
        import threading
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def _rss_mb(self) -> float:
        return int(_PROC_STATM.read_text().split()[1]) * self._page_mb

    def _run(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, self._rss_mb() - self._base)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _RssSampler:
        self._base = self._rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _peak_mb_rusage(fn: Callable[[], object]) -> float:
    try:
        import resource
    except ImportError:
        raise RuntimeError(
            f"peak_memory_mb cannot measure CPU memory on {platform.system() or sys.platform}: "
            "it needs Linux's /proc or the resource module of macOS and other Unix "
            "systems; measure on Linux, or on a CUDA device") from None
    warnings.warn("no /proc here: peak_memory_mb reports how far fn() raised the process's "
                  "lifetime peak memory, which is its own peak only in a fresh process",
                  RuntimeWarning, stacklevel=3)
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else kB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) * unit / 2**20


def worker_pool(workers: int, fn: Callable, device: torch.device | str = "cpu"):
    """A `ProcessPoolExecutor` of `workers` processes started the way `start_method`
    finds safe for `fn`, or None where the jobs should run in turn (one worker, a
    GPU, one core, several torch threads, or no safe start method)."""
    from concurrent.futures import ProcessPoolExecutor

    method, _ = start_method(fn, device)
    if workers < 2 or method is None:
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def start_method(fn: Callable, device: torch.device | str = "cpu",
                 system: str | None = None) -> tuple[str | None, str]:
    """How to run `fn` in worker processes here: (start method or None, why).

    Shared by `recovery.run_jobs`, `spirals.run_parallel` and `cnf.in_parallel`.

    - "fork" on Linux: the workers inherit the caller's state, so `fn` may be a
      function defined in a notebook. Only while torch runs on one thread: a
      child forked after multi-threaded work waits forever in OpenMP.
    - "spawn" elsewhere (macOS, where forking is unsafe, and Windows, which
      has no fork), for a function a fresh process can import from a module.
    - None: run in turn here (a GPU, one core, or a function defined in a
      notebook where only "spawn" is safe: a new process cannot import it).

    `system` is `sys.platform` unless given (the tests ask for each platform).
    """
    system = system or sys.platform
    if torch.device(device).type != "cpu":
        return None, "on a GPU the runs go in turn (one device, no forking CUDA)"
    if (os.cpu_count() or 1) < 2:
        return None, "one CPU core: the runs go in turn"
    methods = multiprocessing.get_all_start_methods()
    if system.startswith("linux") and "fork" in methods:
        if torch.get_num_threads() > 1:
            return None, (f"torch runs on {torch.get_num_threads()} threads, and forking after "
                          "threaded work can hang: the runs go in turn")
        return "fork", "forked workers (Linux), one torch thread each"
    module = getattr(fn, "__module__", "__main__")
    if module in ("__main__", None) or "<locals>" in getattr(fn, "__qualname__", ""):
        return None, (f"{system} has no safe fork, and {getattr(fn, '__name__', fn)!r} "
                      "is defined in the notebook, so a spawned worker cannot import it: "
                      "the runs go in turn")
    return "spawn", f"spawned workers ({system}), one torch thread each"


def run_summary(start: float, budget: str, device: torch.device | str) -> str:
    """'How this run was made': budget, hardware, versions, wall and CPU time, load.

    `start` is a `time.perf_counter()` reading from the notebook's first cells. The
    CPU seconds count this process and its finished child processes (workers), so on
    a shared machine they show how much of the wall time was this run's own work.
    """
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
