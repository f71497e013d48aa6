"""The README is a reader's map: the paper and the post linked, what reproduces first,
and a results table short enough to read (everything else lives in results/)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match[1]


def test_the_paper_and_the_post_are_linked():
    assert "](https://arxiv.org/abs/1806.07366)" in README
    assert "](https://msurtsukov.github.io/Neural-ODE/)" in README


def test_the_findings_come_first():
    headings = re.findall(r"^## (.*)$", README, re.M)
    assert headings[0] == "What reproduces, and what does not", headings
    assert len(re.findall(r"^- \*\*", section(headings[0]), re.M)) >= 5


def test_the_results_table_is_short_and_points_to_the_rest():
    results = section("Results")
    rows = [ln for ln in results.splitlines() if ln.startswith("|")][2:]  # header, rule
    assert 5 <= len(rows) <= 15, len(rows)
    assert "](results/README.md)" in results
    assert (ROOT / "results" / "README.md").exists()


def test_links_look_like_links():
    assert not re.findall(r"\[`[^\]]*`\]\(", README)
