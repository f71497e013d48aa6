"""measure: the timer waits for the GPU, the peak-memory readings, the fresh process, tables."""

import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

import measure
from measure import in_fresh_process, markdown_table, peak_memory_mb
from odecore import LinearODEF, odeint
from problems import dopri5_bound, exact_path, problem, rel_err


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------
def test_seconds_waits_for_the_gpu_before_each_reading(monkeypatch):
    """With CUDA in use, every reading of the clock after fn() follows a synchronisation."""
    log = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: log.append("sync"))
    clock = iter(range(100))
    monkeypatch.setattr(measure.time, "perf_counter",
                        lambda: log.append("clock") or float(next(clock)))
    seconds = measure.seconds(lambda: log.append("fn"), repeats=3)
    monkeypatch.undo()
    assert log == ["fn", "sync"] + ["clock", "fn", "sync", "clock"] * 3, log
    assert seconds == 1.0


# --------------------------------------------------------------------------
# Peak memory, in a fresh process as the notebooks measure: in a long-lived
# process (this one, after the other tests) malloc can hand out memory that is
# freed but still resident, and a peak made of it shows no rise at all (CI's
# clean clone read 0.004 MB).
# --------------------------------------------------------------------------
def fresh(*args) -> float:
    return in_fresh_process("problems:temporary_array_peak_mb", *args, timeout=120)


def test_peak_memory_sees_a_temporary_array():
    assert 80 < fresh() < 200


@pytest.mark.skipif(not measure._PROC_STATM.exists(), reason="no /proc/self/statm to sample")
def test_peak_memory_without_a_resettable_high_water_mark():
    """Where VmHWM cannot be reset (a read-only /proc, some sandboxes) and the process
    peaked higher before: the resident set sampled while fn runs still sees fn's peak."""
    assert 80 < fresh(300, False) < 200


def test_peak_memory_high_water_mark_sees_what_sampling_misses():
    """With the sampler reading only once, on entry, the result is the high-water mark's."""
    try:
        resets = in_fresh_process("problems:high_water_mark_mb", timeout=120) > 40
    except RuntimeError:  # no /proc/self/clear_refs here
        resets = False
    if not resets:
        pytest.skip("this kernel does not keep a resettable VmHWM")
    assert 80 < fresh(0, True, False) < 200


def test_peak_memory_without_proc_warns_and_reads_the_lifetime_peak(monkeypatch):
    """Without /proc (macOS): the rise of getrusage's high-water mark, in MB, with a warning."""
    rss = iter([1000 * 2**10, 1150 * 2**10])  # ru_maxrss before and after fn(), in kB (Linux)

    class FakeResource:
        RUSAGE_SELF = 0

        @staticmethod
        def getrusage(who):
            return types.SimpleNamespace(ru_maxrss=next(rss))

    monkeypatch.setattr(measure, "_PROC_STATUS", Path("/nonexistent/status"))
    monkeypatch.setattr(measure, "_PROC_STATM", Path("/nonexistent/statm"))
    monkeypatch.setitem(sys.modules, "resource", FakeResource)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.warns(RuntimeWarning, match="lifetime peak"):
        assert peak_memory_mb(lambda: None) == 150.0


def test_peak_memory_says_when_it_cannot(monkeypatch):
    monkeypatch.setattr(measure, "_PROC_STATUS", Path("/nonexistent/status"))
    monkeypatch.setattr(measure, "_PROC_STATM", Path("/nonexistent/statm"))
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: no resource module
    with pytest.raises(RuntimeError, match="cannot measure CPU memory"):
        peak_memory_mb(lambda: None)


# --------------------------------------------------------------------------
# A fresh process
# --------------------------------------------------------------------------
def test_in_fresh_process_returns_the_result_of_a_new_one_thread_process():
    x, threads, malloc, pid = in_fresh_process("problems:child_facts", 41, timeout=120)
    import os

    assert (x, threads, malloc) == (42, 1, measure.FRESH_ENV["MALLOC_MMAP_THRESHOLD_"])
    assert pid != os.getpid()


def test_in_fresh_process_reports_a_failing_child():
    with pytest.raises(RuntimeError, match="failed in a fresh process"):
        in_fresh_process("problems:no_such_function", timeout=120)


# --------------------------------------------------------------------------
# What an adaptive solve costs
# --------------------------------------------------------------------------
@pytest.mark.numerical
def test_tolerance_sweep_against_the_matrix_exponential(monkeypatch):
    """Figure 3's measurements: the error it reports is the solve's true error, up to its
    reference's own error; each error within what dopri5 allows at that tolerance; the
    time is the median of the repeated solves."""
    A, z0, _, _ = problem("shared")
    func = LinearODEF(A)
    tols, ref_tol = [1e-2, 1e-4, 1e-6], 1e-9
    readings = iter(range(10**6))  # a fake clock: each solve takes one tick more than the last

    def fake_clock():
        return float(sum(range(next(readings) + 1)))
    monkeypatch.setattr("measure.time.perf_counter", fake_clock)
    rows = measure.tolerance_sweep(func, z0, tols, loss_fn=lambda z: z.pow(2).sum(), repeats=3,
                           ref_tol=ref_tol)
    monkeypatch.undo()
    t01 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    exact = exact_path(A, z0, t01)[-1]
    with torch.no_grad():
        ref = odeint(LinearODEF(A), z0, t01, "dopri5", rtol=ref_tol, atol=ref_tol)[-1]
    ref_err = rel_err(ref, exact)
    for k, (row, tol) in enumerate(zip(rows, tols)):
        with torch.no_grad():
            z1 = odeint(func, z0, t01, "dopri5", rtol=tol, atol=tol)[-1]
        true = rel_err(z1, exact)
        # |err vs ref - err vs exact| <= |ref - exact| / |exact| (triangle inequality), to
        # first order in the reference's error, which is 1e-5 of the errors or less here
        assert abs(row["error"] - true) <= 2 * ref_err + 1e-15, (row, true, ref_err)
        bound = dopri5_bound(row["nfe_forward"], z0.numel(), tol, tol,
                             float(exact.abs().max())) / float(exact.norm())
        assert true <= bound, (tol, true, bound)
        assert row["nfe_backward_seminorm"] <= row["nfe_backward_mixed"]
        # Reading n of the fake clock is n(n+1)/2, so a solve between readings n and n+1
        # takes n + 1 s; the sweep's 3k-th to (3k+2)-th solves read 6k..6k+5, and the median
        # of 6k+1, 6k+3, 6k+5 seconds is the middle one.
        assert row["forward_s"] == 6 * k + 3, row
    assert [r["nfe_forward"] for r in rows] == sorted(r["nfe_forward"] for r in rows)
    assert func.lin.weight.grad is None  # cleared after the backward passes


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------
def test_markdown_table_from_a_frame_or_from_rows():
    df = pd.DataFrame({"a": [1, 2]}, index=pd.Index(["x", "y"], name="k"))
    expected = "| k | a |\n|---|---|\n| x | 1 |\n| y | 2 |"
    assert markdown_table(df) == expected
    assert markdown_table(["k", "a"], [["x", 1], ["y", 2]]) == expected
