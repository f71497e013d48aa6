"""The committed notebooks' shape: what a reader sees on GitHub and in JupyterLab.

Static checks of the saved files, no kernel: short code cells, the project kernel's
kernelspec (so opening a notebook in JupyterLab leaves `git status` clean), no
widget state, no blank stderr outputs, and prose whose numbers a rerun cannot
contradict. `scripts/run_notebooks.py` and JupyterLab's pre-save hook (`make lab`)
write notebooks that pass the first four; `scripts/normalize_notebooks.py` cleans
a notebook saved another way.

What is checked is what is committed: a user who ran the notebooks (`make run`) or
saved one from JupyterLab has a working copy with their own outputs, which these
tests read from `git show HEAD:<path>` instead (a warning says so). Set
NODE_CHECK_WORKTREE=1 to check the working copy, as before committing a new run.
"""

import functools
import json
import os
import re
import subprocess
import warnings
from pathlib import Path

import pytest

from normalize_notebooks import project_kernelspec

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
MAX_LINES = 30
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json")


def committed_text(root: Path, rel: str) -> tuple[str, bool]:
    """(the file's text as committed, whether that is HEAD's rather than the working
    copy's). HEAD's when the working copy differs from it and NODE_CHECK_WORKTREE is
    not 1; the working copy's outside a git checkout or for a file not yet committed."""
    if os.environ.get("NODE_CHECK_WORKTREE") != "1":
        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True)
        try:
            if git("diff", "--quiet", "HEAD", "--", rel).returncode == 1:
                head = git("show", f"HEAD:{rel}")
                if head.returncode == 0:
                    return head.stdout, True
        except OSError:  # no git
            pass
    return (root / rel).read_text(encoding="utf-8"), False


@functools.cache
def load(path: Path) -> dict:
    rel = path.relative_to(ROOT).as_posix()
    raw, from_head = committed_text(ROOT, rel)
    if from_head:
        warnings.warn(f"{rel} differs from HEAD (run or saved here): checking the committed "
                      "version; NODE_CHECK_WORKTREE=1 checks the working copy", stacklevel=2)
    return json.loads(raw)


def test_a_run_or_saved_notebook_is_checked_as_committed(tmp_path, monkeypatch):
    monkeypatch.delenv("NODE_CHECK_WORKTREE", raising=False)
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "nb.ipynb").write_text("committed")
    git("add", "nb.ipynb")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert committed_text(tmp_path, "nb.ipynb") == ("committed", False)
    (tmp_path / "nb.ipynb").write_text("run here")
    (tmp_path / "new.ipynb").write_text("not committed yet")
    assert committed_text(tmp_path, "nb.ipynb") == ("committed", True)
    assert committed_text(tmp_path, "new.ipynb") == ("not committed yet", False)
    monkeypatch.setenv("NODE_CHECK_WORKTREE", "1")
    assert committed_text(tmp_path, "nb.ipynb") == ("run here", False)


def text(value) -> str:
    """A notebook's multi-line string, saved as one string or as a list of lines."""
    return "".join(value) if isinstance(value, list) else value


def source(cell) -> str:
    return text(cell.get("source", ""))


def outputs(nb):
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            yield i, out


notebook = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@notebook
def test_code_cells_are_short(path):
    long = {i: len(source(c).splitlines()) for i, c in enumerate(load(path)["cells"])
            if c["cell_type"] == "code" and len(source(c).splitlines()) > MAX_LINES}
    assert not long, f"code cells over {MAX_LINES} lines (cell index: lines): {long}"


@notebook
def test_kernelspec_is_the_project_kernels(path):
    expected = project_kernelspec()
    found = load(path)["metadata"].get("kernelspec")
    assert found == expected, (
        f"kernelspec {found} is not the project kernel's {expected}: JupyterLab would "
        f"rewrite it on opening; run .venv/bin/python scripts/normalize_notebooks.py {path.name}")


@notebook
def test_no_widget_state(path):
    nb = load(path)
    assert "widgets" not in nb["metadata"], "widget state saved in the notebook's metadata"
    cells = sorted({i for i, out in outputs(nb)
                    if any(m in out.get("data", {}) for m in WIDGET_MIMES)})
    assert not cells, f"widget outputs in cells {cells}: use nbutils.progress"


@notebook
def test_no_blank_stderr_outputs(path):
    cells = sorted({i for i, out in outputs(load(path))
                    if out.get("output_type") == "stream" and out.get("name") == "stderr"
                    and not text(out.get("text", "")).strip()})
    assert not cells, f"empty or whitespace-only stderr outputs in cells {cells}"


# --------------------------------------------------------------------------
# The static prose quotes no number that a rerun can change
# --------------------------------------------------------------------------
# A decimal number, or a percentage, in a markdown cell.
NUMBER = r"(?<![\w.])(-?\d+\.\d+(?:e[-+]?\d+)?|\d+(?=\s*\\?%))(?![\w.]*\d)"
# Numbers the static prose may quote that no code cell writes, each with the reason it
# cannot change from run to run: settings, definitions, the paper's or the post's numbers,
# and results of float64 closed forms that round-off cannot move at the digits quoted.
STABLE = {
    "01_dynamics_recovery": {
        "6.29": "the post's time span, 6.29 * 5, a setting",
        "0.158": "the observation spacing, 6.29 * 5 / 199, a setting",
    },
    "02_mnist_ode_net": {
        "0.1307": "the post's pixel mean, a setting", "0.3081": "the post's pixel std",
    },
    "03_latent_ode_vae": {
        "31.45": "the post's time span, a setting",
        "0.038": "the paper's grid step, 6*pi/499, a setting",
        "0.158": "the post's grid step, 31.45/199, a setting",
        "0.02": "the post's noise, a setting (spirals.SpiralConfig)",
        "0.01": "the learning rate, a setting (spirals.TrainConfig)",
        **{v: "the paper's Table 2 (spirals.PAPER_TABLE2)"
           for v in ("0.1642", "0.1502", "0.1346", "0.3937", "0.3202", "0.1813")},
        "0.3": "the paper's noise (and: users' reports of the authors' example, 0.3 to 0.4)",
        "0.4": "users' reports of the authors' example code (torchdiffeq issue #117)",
    },
    "04_latent_homotopy": {"7.5": "the end of the decoded grid, a setting"},
    "05_continuous_normalizing_flows": {"95": "the 95th percentile: a definition",
                                        "0.95": "the 95th percentile: a definition"},
    "07_the_solver_inside": {
        "1.6": "Van der Pol's period in Hairer and Wanner's scaling, a property of the problem",
        **{v: "where dopri5's stability region meets the negative real axis, of the method"
           for v in ("3.3", "-3.3")},
    },
}


def decimals(token: str) -> int:
    mantissa = token.split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def written_numbers(nb) -> list[tuple[float, int]]:
    """Every number the code cells write (settings, the paper's numbers), with its decimals."""
    chunks = [source(c) for c in nb["cells"] if c["cell_type"] == "code"]
    # the exercises' solutions: code the reader runs (tests/test_exercises.py runs it)
    chunks += [block for c in nb["cells"] if c["cell_type"] == "markdown"
               for block in re.findall(r"```python\n(.*?)```", source(c), re.S)]
    found = re.findall(r"(?<![\w.])(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w.]*\d)",
                       "\n".join(chunks))
    return [(float(t), decimals(t)) for t in found]


def is_written(token: str, written: list[tuple[float, int]], percent: bool = False) -> bool:
    """Written as it is, or with more digits that round to it; a percentage may be written
    as a fraction (1.5% as 0.015)."""
    x, d = float(token), decimals(token)
    if any((e >= d and round(y, d) == round(x, d)) or (e < d and y == x) for y, e in written):
        return True
    return percent and is_written(f"{x / 100:.{d + 2}f}", written)


@notebook
def test_static_prose_quotes_no_number_a_rerun_can_change(path):
    """A number in a markdown cell must be one the code writes (a setting, the paper's or
    the post's number), or be listed in STABLE with its reason. A number that only the
    outputs print moves between runs and machines: the sentence that quotes it must be
    written by the run (`nbutils.markdown`), and the static prose says what holds from
    run to run (an ordering, "about", a ratio with its variation), which the notebook's
    checks assert."""
    nb = load(path)
    written = written_numbers(nb)
    allowed = STABLE.get(path.stem, {})
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        prose = re.sub(r"\(https?://[^)]*\)|https?://\S+|arXiv:\s*\S+|[Ss]ection \d[\d.]*",
                       " ", re.sub(r"```python\n.*?```", " ", source(cell), flags=re.S))
        prose = re.sub(r"(\d+\.\d+)\s*\\cdot\s*10\^\{(-?\d+)\}", r"\1e\2", prose)  # LaTeX
        found += [(i, m[1]) for m in re.finditer(NUMBER + r"(\s*\\?%)?", prose)
                  if m[1] not in allowed and not is_written(m[1], written, bool(m[2]))]
    assert not found, ("static markdown quotes numbers no code writes (cell, number); write "
                       f"them from the run with nbutils.markdown, or list them in STABLE: {found}")


# --------------------------------------------------------------------------
# The lesson speaks of ideas; the run's bookkeeping lives at the end
# --------------------------------------------------------------------------
# Words that describe how a run was made, not what it teaches, each with the reason.
# Above the closing "How this run was made" section they distract from the lesson
# and date it: a reader on another machine has other cores, another load.
BOOKKEEPING = {
    r"load average|the load\b|\bloaded\b": "the machine's load: how this run was made",
    r"\bthreads?\b|single-threaded|multithreaded": "threads: how this run was made",
    r"\bworkers?\b|workers\.run|workers\.submit": "the worker pool: engineering, not the lesson",
    r"\bfork(ed|s)?\b|\bspawn(ed|s)?\b": "process start methods: engineering",
    r"fresh (Python )?process": "how a measurement was isolated: the closing section",
    r"(shared|this|the) machine\b|\bon a GPU\b|\bthe CPU's\b|\bcores?\b|AVX": "hardware",
    r"earlier runs?|previous runs?|repeated runs|rerun|re-run": "other runs: results/",
    r"during development|\bcommit(ted|s)?\b": "the project's history, not the lesson's",
    r"\b(the|this|our) issue\b|issue's": "the project's tracker",
    r"wall[- ]time|CPU seconds|seconds of CPU": "the run's times: the closing section",
}


def lesson_cells(nb) -> list[tuple[int, str]]:
    """The markdown cells above the closing 'How this run was made' section."""
    cells = []
    for i, cell in enumerate(nb["cells"]):
        text = source(cell)
        if cell["cell_type"] == "markdown" and re.search(r"^## How this run was made", text,
                                                          re.M):
            cells.append((i, text.split("## How this run was made")[0]))
            break
        if cell["cell_type"] == "markdown":
            cells.append((i, text))
    return cells


def test_bookkeeping_words_are_caught():
    nb = {"cells": [{"cell_type": "markdown", "source": "Ran on 2 cores with one thread."},
                    {"cell_type": "markdown", "source": "## How this run was made\nthreads"}]}
    hits = [(i, p) for i, text in lesson_cells(nb) for p in BOOKKEEPING
            if re.search(p, text, re.I)]
    assert [i for i, _ in hits] == [0, 0]


@notebook
def test_the_lesson_holds_no_run_bookkeeping(path):
    """Machines, loads, threads, workers and earlier runs belong to the closing section
    ('How this run was made') and to results/, not to the lesson (DESIGN.md)."""
    nb = load(path)
    found = [(i, m[0], why) for i, text in lesson_cells(nb) for pattern, why in BOOKKEEPING.items()
             for m in re.finditer(pattern, text, re.I)]
    assert not found, f"run bookkeeping in the lesson's prose (cell, words, why): {found}"


@notebook
def test_the_first_code_cell_is_one_setup_call(path):
    first = next(source(c) for c in load(path)["cells"] if c["cell_type"] == "code")
    lines = [ln for ln in first.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) <= 3 and "nbutils.setup(" in first, first


@notebook
def test_links_look_like_links(path):
    """A link whose text is inline code renders as code in JupyterLab, not as a link."""
    found = [(i, m[0]) for i, cell in enumerate(load(path)["cells"])
             if cell["cell_type"] == "markdown"
             for m in re.finditer(r"\[`[^\]]*`\]\([^)]*\)", source(cell))]
    assert not found, f"links written as code (cell, link): {found}"
