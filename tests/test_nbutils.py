"""nbutils: progress bars in each place a notebook runs, memory measurement, the run summary."""

import subprocess
import sys
import time
import types
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import nbutils
from nbutils import peak_memory_mb, progress, progress_mode, run_summary

ROOT = Path(__file__).resolve().parents[1]
WIDGET = "application/vnd.jupyter.widget-view+json"


# --------------------------------------------------------------------------
# Progress bars
# --------------------------------------------------------------------------
def test_progress_mode_from_the_environment(monkeypatch):
    monkeypatch.delenv("NODE_PROGRESS", raising=False)
    assert progress_mode() == "auto"
    monkeypatch.setenv("NODE_PROGRESS", " Text ")
    assert progress_mode() == "text"
    monkeypatch.setenv("NODE_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="auto, text, off"):
        progress_mode()


def test_text_bars_go_to_stdout_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("NODE_PROGRESS", "text")
    assert list(progress(range(3), desc="fit")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1  # redraws with \r, one final newline
    assert out.rsplit("\r", 1)[-1].startswith("fit: 100%|") and "3/3" in out


def test_a_total_alone_gives_a_bar_to_update(monkeypatch, capsys):
    monkeypatch.setenv("NODE_PROGRESS", "text")
    with progress(4, desc="jobs") as bar:
        assert bar.total == 4
        for _ in range(4):
            bar.update(1)
    assert "4/4" in capsys.readouterr().out


def test_off_draws_nothing_and_auto_in_a_terminal_uses_stderr(monkeypatch, capsys):
    monkeypatch.setenv("NODE_PROGRESS", "off")
    assert list(progress([1, 2], desc="quiet")) == [1, 2]
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("NODE_PROGRESS", "auto")
    list(progress(range(2), desc="terminal"))
    out, err = capsys.readouterr()
    assert out == "" and "terminal: 100%" in err


def run_in_kernel(monkeypatch, mode: str) -> list:
    """The outputs of one cell that draws a bar and prints, run in a fresh kernel."""
    monkeypatch.setenv("NODE_PROGRESS", mode)
    cell = nbformat.v4.new_code_cell(
        "from nbutils import progress\n"
        "for i in progress(range(3), desc='steps'):\n"
        "    pass\n"
        "print('done')")
    nb = nbformat.v4.new_notebook(cells=[cell])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb.cells[0].outputs


@pytest.mark.parametrize("mode", ["auto", "text"])
def test_bars_in_a_kernel(monkeypatch, mode):
    """What JupyterLab's kernel draws (auto: a widget) and what make run/make test save (text)."""
    outputs = run_in_kernel(monkeypatch, mode)
    widgets = [o for o in outputs if WIDGET in o.get("data", {})]
    streams = [(o.name, o.text) for o in outputs if o.output_type == "stream"]
    assert all(name == "stdout" for name, _ in streams), streams  # nothing on stderr
    text = "".join(t for _, t in streams)
    if mode == "auto":
        assert len(widgets) == 1 and "steps" not in text
    else:
        assert not widgets
        assert "steps: 100%|" in text and text.endswith("done\n")


# --------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------
def in_fresh_python(*lines: str, check: bool = True) -> str:
    """What `lines` print, run in a new interpreter that imports from the repository;
    with `check`, a failure raises with the child's stderr."""
    script = "\n".join(["import sys", "sys.path.insert(0, sys.argv[1])", *lines])
    run = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True,
                         text=True, timeout=120)
    if check and run.returncode:
        raise RuntimeError(f"fresh python failed:\n{run.stderr}")
    return run.stdout


def fresh_peak_mb(setup: str = "") -> float:
    """peak_memory_mb of a 100 MB temporary array, after `setup`, in a fresh process.
    Fresh, as the notebooks measure: in a long-lived process (this one, after the
    other tests) malloc can hand out memory that is freed but still resident, and
    a peak made of it shows no rise at all (CI's clean clone read 0.004 MB)."""
    return float(in_fresh_python(
        "from pathlib import Path", "import numpy as np", "import nbutils", setup,
        "print(nbutils.peak_memory_mb(lambda: np.ones(100 * 2**20 // 8).sum()))"))


def test_peak_memory_sees_a_temporary_array():
    assert 80 < fresh_peak_mb() < 200


@pytest.mark.skipif(not nbutils._PROC_STATM.exists(), reason="no /proc/self/statm to sample")
def test_peak_memory_without_a_resettable_high_water_mark():
    """Where VmHWM cannot be reset (a read-only /proc, some sandboxes) and the process
    peaked higher before: the resident set sampled while fn runs still sees fn's peak."""
    setup = ("np.ones(300 * 2**20 // 8).sum()\n"
             "nbutils._PROC_CLEAR_REFS = Path('/nonexistent/clear_refs')")
    assert 80 < fresh_peak_mb(setup) < 200


def hwm_resets() -> bool:
    """Does this kernel keep VmHWM and reset it on request? (in a fresh process)"""
    out = in_fresh_python("import numpy as np, nbutils",
                          "print(nbutils._peak_mb_proc(lambda: np.ones(50 * 2**20 // 8).sum()))",
                          check=False)
    return bool(out.strip()) and float(out) > 40


@pytest.mark.skipif(not hwm_resets(), reason="this kernel does not keep a resettable VmHWM")
def test_peak_memory_high_water_mark_sees_what_sampling_misses():
    """With the sampler reading only once, on entry, the result is the high-water mark's."""
    assert 80 < fresh_peak_mb("nbutils._RssSampler.interval = 3600.0") < 200


def test_peak_memory_without_proc_warns_and_reads_the_lifetime_peak(monkeypatch):
    """Without /proc (macOS): the rise of getrusage's high-water mark, in MB, with a warning."""
    rss = iter([1000 * 2**10, 1150 * 2**10])  # ru_maxrss before and after fn(), in kB (Linux)

    class FakeResource:
        RUSAGE_SELF = 0

        @staticmethod
        def getrusage(who):
            return types.SimpleNamespace(ru_maxrss=next(rss))

    monkeypatch.setattr(nbutils, "_PROC_STATUS", Path("/nonexistent/status"))
    monkeypatch.setattr(nbutils, "_PROC_STATM", Path("/nonexistent/statm"))
    monkeypatch.setitem(sys.modules, "resource", FakeResource)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.warns(RuntimeWarning, match="lifetime peak"):
        assert peak_memory_mb(lambda: None) == 150.0


def test_peak_memory_says_when_it_cannot(monkeypatch):
    monkeypatch.setattr(nbutils, "_PROC_STATUS", Path("/nonexistent/status"))
    monkeypatch.setattr(nbutils, "_PROC_STATM", Path("/nonexistent/statm"))
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: no resource module
    with pytest.raises(RuntimeError, match="cannot measure CPU memory"):
        peak_memory_mb(lambda: None)


# --------------------------------------------------------------------------
# How this run was made
# --------------------------------------------------------------------------
def test_run_summary_names_budget_versions_and_time():
    text = run_summary(time.perf_counter() - 2.0, "smoke", "cpu")
    assert "budget smoke, device cpu" in text
    assert "torch " in text and "python " in text
    assert "s wall" in text and "s of CPU" in text


# --------------------------------------------------------------------------
# Records of runs
# --------------------------------------------------------------------------
def test_record_round_trip(monkeypatch, tmp_path):
    monkeypatch.setattr(nbutils, "RECORDS", tmp_path / "results")
    assert nbutils.load_record("03_demo", "full") is None
    path = nbutils.save_record("03_demo", "full", {"rmse": {"30": 0.25}}, "cpu")
    assert path == tmp_path / "results" / "03_demo-full.json"
    record = nbutils.load_record("03_demo", "full")
    assert record["numbers"] == {"rmse": {"30": 0.25}}
    assert record["budget"] == "full" and record["device"] == "cpu" and record["date"]
    elsewhere = nbutils.save_record("03_demo", "trial", {"x": 1}, "cpu", tmp_path / "trial")
    assert elsewhere == tmp_path / "trial" / "03_demo-trial.json" and elsewhere.exists()
    assert nbutils.load_record("03_demo", "trial") is None  # results/ untouched


def test_committed_records_are_well_formed():
    """Each committed record names its notebook and budget, and that notebook exists."""
    for path in sorted(nbutils.RECORDS.glob("*.json")):
        record = nbutils.load_record(*path.stem.rsplit("-", 1))
        assert f"{record['notebook']}-{record['budget']}" == path.stem
        assert (ROOT / "notebooks" / f"{record['notebook']}.ipynb").exists(), path
        assert record["numbers"], path
