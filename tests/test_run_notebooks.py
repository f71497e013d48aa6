"""The notebook runner saves what a reader would see of progress bars, not every redraw."""

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from run_notebooks import clean_outputs, collapse_redraws  # noqa: E402


def test_collapse_keeps_the_last_redraw_of_each_line():
    assert collapse_redraws("\r 10%\r 50%\r100%\ndone\n") == "100%\ndone\n"
    assert collapse_redraws("plain\ntext\n") == "plain\ntext\n"
    assert collapse_redraws("bar 1\rbar 2\r") == "bar 2"


def test_consecutive_stream_outputs_are_merged_before_collapsing():
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\rloss 1.0"),
        nbformat.v4.new_output("stream", name="stderr", text="\rloss 0.5"),
        nbformat.v4.new_output("stream", name="stderr", text="\rloss 0.1\n"),
        nbformat.v4.new_output("stream", name="stdout", text="accuracy 99%\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\rnext 0%\rnext 100%\n"),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell])
    clean_outputs(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [
        ("stderr", "loss 0.1\n"), ("stdout", "accuracy 99%\n"), ("stderr", "next 100%\n")]
