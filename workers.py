"""workers: the one worker pool every parallel run of the course uses.

The course's models are small: a 2-D state, a few dozen hidden units. One
torch thread trains one of them as fast as two (a second thread only waits),
so a multi-core CPU trains several independent ones side by side, one a core:
notebook 01's seeds and ablation, notebook 03's RNN beside its latent ODE,
notebook 05's fits. Three calls:

* `run(fn, jobs, desc=...)`: `[fn(job) for job in jobs]`, in worker processes;
* `submit(fn, job)`: one job on a spare core while this process does other
  work; `.result()` collects it;
* `start_method(fn, device)`: how (or whether) workers can start here, and why.

Every worker runs torch on one thread. Jobs must take their randomness from
their arguments (seeds), so running them in turn gives the same results.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from nbutils import get_device, progress

__all__ = ["start_method", "one_thread_on_cpu", "run", "submit"]


def start_method(fn: Callable, device: torch.device | str = "cpu",
                 system: str | None = None) -> tuple[str | None, str]:
    """How to run `fn` in worker processes here: (start method or None, why).

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


def one_thread_on_cpu(device: torch.device | str) -> int:
    """One torch thread on the CPU; returns the thread count now in use.

    The course's states are 2-D and its models a few dozen units wide: every
    operation is microseconds of arithmetic, so a second thread only adds
    waiting. One thread also makes forking workers safe (`start_method`).
    On a GPU the thread count is left alone.
    """
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    return torch.get_num_threads()


def _in_worker(fn: Callable, job):
    # A worker must not enter its parent's OpenMP pool (a forked child would wait
    # forever for threads that were not copied), and one thread is the fast path.
    torch.set_num_threads(1)
    return fn(job)


def _pool(fn: Callable, workers: int, device: torch.device | str | None,
          system: str | None = None) -> tuple[ProcessPoolExecutor | None, str]:
    if device is None:  # the machine's: where there is a GPU, the jobs use it
        device = get_device()
    method, why = start_method(fn, device, system)
    if workers < 2:
        method, why = None, "one job or one core: the runs go in turn"
    if method is None:
        return None, why
    context = multiprocessing.get_context(method)
    return ProcessPoolExecutor(workers, mp_context=context), f"{workers} {why}"


def run(fn: Callable, jobs: Sequence, desc: str | None = None,
        device: torch.device | str | None = None, workers: int | None = None,
        system: str | None = None) -> list:
    """`[fn(job) for job in jobs]`, one worker process a core where that is safe.

    With `desc`, prints how the runs go (and why) and draws a progress bar
    (`nbutils.progress`) that advances as results arrive; without, runs
    silently. `workers` defaults to one a core, at most one a job. `device`
    is where the jobs compute (default: the GPU where there is one, and then
    they run in turn).
    """
    jobs = list(jobs)
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    pool, how = _pool(fn, workers, device, system)
    if desc is not None:
        print(f"{desc}: {len(jobs)} run(s), {how}")
    bar = progress(total=len(jobs), desc=desc, disable=desc is None)
    results = []
    with bar:
        if pool is None:
            for job in jobs:
                results.append(fn(job))
                bar.update(1)
            return results
        with pool:
            for result in pool.map(_in_worker, [fn] * len(jobs), jobs):
                results.append(result)
                bar.update(1)
    return results


class _Done:
    """A finished result with the `result()` of a future (the job ran in this process)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def submit(fn: Callable, job, device: torch.device | str | None = None) -> Future | _Done:
    """Start `fn(job)` on a spare core and return a future; in turn where there is none.

    On a GPU, on one core or where no start method is safe, `fn(job)` runs
    here and now and the returned object holds its result.
    """
    pool, _ = _pool(fn, min(2, os.cpu_count() or 1), device)
    if pool is None:
        return _Done(fn(job))
    future = pool.submit(_in_worker, fn, job)
    pool.shutdown(wait=False)  # the worker finishes its one job, then exits
    return future
