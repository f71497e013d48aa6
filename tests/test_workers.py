"""workers: the one pool picks a start method that is safe where it runs, and keeps order."""

import math
import multiprocessing
import os

import pytest
import torch

import workers


def _square(x):
    return x * x


def _pid(_):
    return os.getpid()


def notebook_fn(x):  # stands for a function defined in a notebook cell
    return x + 1


notebook_fn.__module__ = "__main__"



@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def test_linux_forks_only_on_one_thread(two_cores, one_thread):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    assert workers.start_method(notebook_fn, "cpu", "linux")[0] == "fork"
    torch.set_num_threads(2)
    method, why = workers.start_method(notebook_fn, "cpu", "linux")
    assert method is None and "threads" in why


@pytest.mark.parametrize("system", ["darwin", "win32"])
def test_macos_and_windows_spawn_importable_functions_only(two_cores, one_thread, system):
    assert workers.start_method(_square, "cpu", system)[0] == "spawn"
    assert workers.start_method(math.sqrt, "cpu", system)[0] == "spawn"
    method, why = workers.start_method(notebook_fn, "cpu", system)
    assert method is None and "in turn" in why and "notebook_fn" in why
    method, _ = workers.start_method(lambda x: x, "cpu", system)
    assert method is None


def test_gpu_and_one_core_run_in_turn(monkeypatch, one_thread):
    assert workers.start_method(_square, "cuda", "linux")[0] is None
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert workers.start_method(_square, "cpu", "linux")[0] is None


def test_in_turn_says_so_and_keeps_order(capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert workers.run(_square, [3, 1, 2], "squares") == [9, 1, 4]
    assert "squares: 3 run(s), one job or one core: the runs go in turn" in capsys.readouterr().out
    assert workers.run(_pid, range(3), "pids") == [os.getpid()] * 3


@pytest.mark.parametrize("system", ["linux", "darwin"])
def test_workers_give_the_results_in_order(capsys, two_cores, one_thread, system):
    # darwin: spawned workers, which work on every platform (the slow path: a fresh interpreter)
    if system == "linux" and "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    assert workers.run(_square, range(5), "squares", system=system) == [0, 1, 4, 9, 16]
    out = capsys.readouterr().out
    assert ("forked" if system == "linux" else "spawned") in out
    pids = workers.run(_pid, range(4), "pids", system=system)  # and they did run there
    assert os.getpid() not in pids, pids


def test_one_thread_on_cpu_only(one_thread):
    torch.set_num_threads(2)
    assert workers.one_thread_on_cpu("cpu") == 1
    torch.set_num_threads(2)
    assert workers.one_thread_on_cpu("cuda") == 2


def test_submit_runs_on_a_spare_core_or_here(monkeypatch, one_thread):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the same path on a one-core machine
    assert workers.submit(_pid, 0).result() != os.getpid()
    assert workers.submit(_square, 3, "cuda").result() == 9  # a GPU: here and now
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert workers.submit(_pid, 0).result() == os.getpid()


def _threads(_):
    return torch.get_num_threads()


@pytest.mark.parametrize("system", ["linux", "darwin"])
def test_every_worker_runs_one_torch_thread(two_cores, one_thread, system):
    # spawned workers start with torch's default thread count unless told otherwise
    if system == "linux" and "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    assert workers.run(_threads, range(2), system=system) == [1, 1]


def test_without_desc_nothing_is_printed(capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert workers.run(_square, [2]) == [4]
    assert capsys.readouterr().out == ""
