"""nbutils: progress bars in each place a notebook runs, the setup, the run summary, records."""

import time
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import nbutils
from nbutils import get_budget, progress, progress_mode, run_summary, save_gif

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
# How this run was made
# --------------------------------------------------------------------------
def test_setup_decides_once_what_every_notebook_needs(monkeypatch, tmp_path, one_thread):
    monkeypatch.setattr(nbutils, "_RUN", {})
    with pytest.raises(RuntimeError, match="setup"):
        run_summary()
    monkeypatch.setenv("NODE_BUDGET", "smoke")
    monkeypatch.setattr(nbutils, "output_dir", lambda *p: tmp_path.joinpath(*p))
    monkeypatch.setattr(nbutils, "REPO_ROOT", tmp_path)
    torch.set_num_threads(2)
    budget, device, assets = nbutils.setup(threads=1, seed=3)
    assert (budget, device.type, torch.get_num_threads()) == ("smoke", "cpu", 1)
    assert assets == tmp_path / "smoke-assets" and assets.is_dir()  # quick alone: assets/
    drawn = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(3))  # seeded
    monkeypatch.setenv("NODE_BUDGET", "quick")
    assert nbutils.setup().assets == tmp_path / "assets"
    monkeypatch.setenv("NODE_BUDGET", "huge")
    with pytest.raises(ValueError, match="NODE_BUDGET='huge'"):
        nbutils.setup()


def test_run_summary_names_budget_versions_and_time(monkeypatch):
    monkeypatch.setattr(nbutils, "_RUN", dict(start=time.perf_counter() - 2.0, budget="smoke",
                                              device="cpu"))
    text = run_summary()
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


def test_headline_numbers_fall_back_to_quick(monkeypatch, tmp_path):
    """A summary takes a budget's floats, else quick's: a nested-only record has none."""
    monkeypatch.setattr(nbutils, "RECORDS", tmp_path)
    assert nbutils.headline_numbers("03_demo", "full") is None
    nbutils.save_record("03_demo", "quick", {"rmse": 0.2, "runs": 3}, "cpu")
    assert nbutils.headline_numbers("03_demo", "full") == ("quick", {"rmse": 0.2})
    nbutils.save_record("03_demo", "full", {"rmse": {"30": 0.25}, "iterations": 6000}, "cpu")
    assert nbutils.headline_numbers("03_demo", "full") == ("quick", {"rmse": 0.2})
    nbutils.save_record("03_demo", "full", {"rmse": 0.1, "table": {"30": 0.25}}, "cpu")
    assert nbutils.headline_numbers("03_demo", "full") == ("full", {"rmse": 0.1})


def test_committed_records_are_well_formed():
    """Each committed record names its notebook and budget, and that notebook exists."""
    for path in sorted(nbutils.RECORDS.glob("*.json")):
        record = nbutils.load_record(*path.stem.rsplit("-", 1))
        assert f"{record['notebook']}-{record['budget']}" == path.stem
        assert (ROOT / "notebooks" / f"{record['notebook']}.ipynb").exists(), path
        assert record["numbers"], path


# --------------------------------------------------------------------------
# The budget and GIFs
# --------------------------------------------------------------------------
def test_budget(monkeypatch):
    monkeypatch.setenv("NODE_BUDGET", "smoke")
    assert get_budget() == "smoke"
    monkeypatch.setenv("NODE_BUDGET", "huge")
    with pytest.raises(ValueError, match="smoke, quick, full"):
        get_budget()


def test_save_gif(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    frames = []
    for k in range(3):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, k])
        frames.append(fig)
    path = save_gif(frames, tmp_path / "x.gif", fps=4)
    with Image.open(path) as im:
        assert im.n_frames == 3
