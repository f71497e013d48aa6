"""Every notebook's exercises, and every solution's code run as the reader would.

A notebook's "## Exercises" cell poses two to four exercises, each with its
solution in a collapsed `<details>` block. The ```python blocks inside a
solution are run here, in a fresh namespace and a scratch directory, so a
solution that an API change breaks fails CI instead of the reader. Each block
asserts what it claims (a solution that prints an answer without checking it
could not fail).
"""

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

DETAILS = re.compile(r"<details>(.*?)</details>", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def exercises_cell(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
             for c in cells if c["cell_type"] == "markdown"]
    found = [s for s in found if s.lstrip().startswith("## Exercises")]
    return found[0] if len(found) == 1 else ""


def solutions(markdown: str) -> list[list[str]]:
    """The ```python blocks of each `<details>` solution, in order."""
    return [PYTHON.findall(block) for block in DETAILS.findall(markdown)]


def run_solution(code: str, name: str) -> None:
    """Run one solution block as the reader would, in a fresh namespace; it must check
    what it claims (a block without an assert could not fail)."""
    import matplotlib

    assert "assert" in code, f"{name}: the solution checks nothing"
    matplotlib.use("Agg")
    exec(compile(code, name, "exec"), {"__name__": "__main__"})


def test_solutions_are_found_in_markdown():
    text = ("## Exercises\n**1.** Q\n<details><summary>Solution</summary>\n\nA\n"
            "```python\nx = 1\nassert x == 1\n```\n</details>\n**2.** R\n<details>B</details>")
    assert solutions(text) == [["x = 1\nassert x == 1\n"], []]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_two_to_four_exercises_with_solutions(path):
    text = exercises_cell(path)
    assert text, f"{path.name}: expected one cell that starts '## Exercises'"
    posed = re.findall(r"^\*\*\d+\.", text, re.M)
    assert 2 <= len(posed) <= 4, f"{path.name}: {len(posed)} exercises (two to four)"
    assert len(DETAILS.findall(text)) == len(posed), f"{path.name}: one solution each"
    assert any(solutions(text)), f"{path.name}: no solution has code that a test can run"


CASES = [(p, i, code) for p in NOTEBOOKS for i, blocks in enumerate(solutions(exercises_cell(p)))
         for code in blocks]


@pytest.mark.parametrize("path, number, code", CASES,
                         ids=[f"{p.stem[:2]}-exercise{i + 1}" for p, i, _ in CASES])
def test_solution_code_runs_and_its_checks_hold(path, number, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NODE_BUDGET", os.environ.get("NODE_BUDGET", "smoke"))
    run_solution(code, f"{path.stem}-exercise-{number + 1}")


if __name__ == "__main__":  # try a draft: python tests/test_exercises.py draft.md
    import sys

    for k, blocks in enumerate(solutions(Path(sys.argv[1]).read_text(encoding="utf-8"))):
        for code in blocks:
            run_solution(code, f"exercise-{k + 1}")
        print(f"exercise {k + 1}: {len(blocks)} block(s) ran")
