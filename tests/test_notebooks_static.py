"""The committed notebooks' shape: what a reader sees on GitHub and in JupyterLab.

Static checks of the saved files, no kernel: short code cells, the project kernel's
kernelspec (so opening a notebook in JupyterLab leaves `git status` clean), no
widget state, no blank stderr outputs. `scripts/run_notebooks.py` writes notebooks
that pass; `scripts/normalize_notebooks.py` fixes the kernelspec alone.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from normalize_notebooks import project_kernelspec  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
MAX_LINES = 30
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json")


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


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
