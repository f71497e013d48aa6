"""measure: the course's measurement kit, one implementation of each.

* `seconds(fn)`: the median wall time of `fn()`, waiting for the GPU's kernels
  (`times(fn)`: each call's);
* `peak_memory_mb(fn)`: the memory `fn()` adds at its peak;
* `in_fresh_process("module:function", *args)`: a call in a new Python process,
  where a peak reading is not hidden by memory an earlier measurement freed;
* `tolerance_sweep`: what an adaptive solve costs at each tolerance (Figure 3);
* `markdown_table(df)`: a table for the notebooks' generated prose.

Notebooks 02 and 05, the benchmark and the tests measure with these. Nothing
here is about training or about the ODE machinery itself (`odecore`).

    python -m measure module:function '[arg, ...]'

is the child side of `in_fresh_process`: it calls the function with the JSON
arguments on one torch thread and prints its result as JSON.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from odecore import ADJOINT_NORMS, ODEF, NeuralODE, odeint

__all__ = ["times", "seconds", "peak_memory_mb", "in_fresh_process", "tolerance_sweep",
           "markdown_table"]


def _sync() -> None:
    """Wait for the GPU's queued kernels: CUDA runs them asynchronously, so a clock
    read without waiting times their launch, not their work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def times(fn: Callable[[], object], repeats: int = 20, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `repeats` calls of `fn()`, after `warmup` untimed ones
    (kernels compile, caches and allocator pools fill)."""
    for _ in range(warmup):
        fn()
    _sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - start)
    return out


def seconds(fn: Callable[[], object], repeats: int = 20, warmup: int = 1) -> float:
    """The median of `times`: one slow call (another process, a page fault) moves it little."""
    return float(np.median(times(fn, repeats, warmup)))


# ---------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# A fresh process
# ---------------------------------------------------------------------------
# glibc otherwise keeps freed multi-MB blocks in its heap (a dynamic mmap
# threshold), so the resident set would reflect fragmentation, not live memory.
FRESH_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def in_fresh_process(target: str, *args: Any, timeout: float = 600) -> Any:
    """`module:function(*args)` called in a new Python process; its result, via JSON.

    A process that measured a larger configuration before keeps that memory
    (the allocator holds it for reuse), so a peak measured after it reads too
    low: each memory probe of the course runs in its own process. The child
    sees this process's `sys.path`, runs torch on one thread and has glibc
    return freed blocks to the system (`FRESH_ENV`). `args` and the result must
    be JSON. A failure raises with the end of the child's stderr.
    """
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    env = dict(os.environ, **FRESH_ENV, PYTHONPATH=os.pathsep.join(paths))
    run = subprocess.run([sys.executable, "-m", "measure", target, json.dumps(args)], env=env,
                         cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                         timeout=timeout, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{target}{tuple(args)} failed in a fresh process:\n"
                           f"{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _child(argv: list[str]) -> None:
    target, args = argv
    module, name = target.split(":")
    torch.set_num_threads(1)
    print(json.dumps(getattr(import_module(module), name)(*json.loads(args))))


# ---------------------------------------------------------------------------
# What an adaptive solve costs
# ---------------------------------------------------------------------------
def tolerance_sweep(func: ODEF, z0: Tensor, tols: Sequence[float],
                    loss_fn: Callable[[Tensor], Tensor],
                    norms: Sequence[str] = ADJOINT_NORMS, ref_tol: float = 1e-9,
                    repeats: int = 3) -> list[dict]:
    """The paper's Figure 3 on one block: what an adaptive solve costs at each tolerance.

    For each `tol` (rtol = atol = tol, dopri5 over t in [0, 1]): the forward NFE,
    the relative error of z(1) against a float64 solve at `ref_tol`, the forward
    time (median of `repeats`, no graph), and for each adjoint norm the backward
    NFE of one gradient of `loss_fn(z(1))`. Gradients land in `func`'s `.grad`s;
    they are cleared at the end.
    """
    t = torch.tensor([0.0, 1.0], dtype=z0.dtype, device=z0.device)
    ref_func = copy.deepcopy(func).double()
    with torch.no_grad():
        ref = odeint(ref_func, z0.double(), t.double(), "dopri5", rtol=ref_tol, atol=ref_tol)[-1]
    rows = []
    for tol in tols:
        block = NeuralODE(func, "dopri5", rtol=tol, atol=tol)
        out = {}

        def forward():
            with torch.no_grad():
                out["z1"] = block(z0, t)

        forward_s = seconds(forward, repeats, warmup=0)
        err = float((out["z1"].double() - ref).norm() / ref.norm())
        row = dict(tol=tol, nfe_forward=block.nfe_forward, error=err, forward_s=forward_s)
        for norm in norms:
            block = NeuralODE(func, "dopri5", rtol=tol, atol=tol, adjoint_norm=norm)
            loss_fn(block(z0, t)).backward()
            row[f"nfe_backward_{norm}"] = block.nfe_backward
            func.zero_grad(set_to_none=True)
        rows.append(row)
    return rows


def markdown_table(headers, rows: Sequence[Sequence] | None = None) -> str:
    """A Markdown table from headers and rows, or from a pandas DataFrame alone
    (its index first), without `tabulate`."""
    if rows is None:
        frame = headers
        headers = [frame.index.name or "", *frame.columns]
        rows = [[i, *row] for i, row in frame.iterrows()]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    _child(sys.argv[1:])
