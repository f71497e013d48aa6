"""The notebook runner saves what a reader would see of progress bars, not every redraw."""

import json
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


def test_blank_streams_widgets_and_widget_state_are_dropped():
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="fit:  50%\rfit: 100%"),
        nbformat.v4.new_output("stream", name="stdout", text="\n"),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
            "text/plain": "HBox(children=(...))"}),
        nbformat.v4.new_output("stream", name="stderr", text="\n"),
        nbformat.v4.new_output("stream", name="stdout", text="\rcleared 10%\r          \r"),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    clean_outputs(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [("stdout", "fit: 100%\n")]
    assert "widgets" not in nb.metadata


def test_runner_saves_text_bars_and_the_project_kernelspec(tmp_path, monkeypatch):
    """End to end: a notebook run by the runner, as make run saves it."""
    from normalize_notebooks import project_kernelspec
    from run_notebooks import main

    monkeypatch.delenv("NODE_PROGRESS", raising=False)
    cell = nbformat.v4.new_code_cell(
        "from nbutils import progress\n"
        "with progress(3, desc='jobs') as bar:\n"
        "    for _ in range(3):\n"
        "        bar.update(1)\n"
        "print('after')")
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    path = tmp_path / "01_tiny.ipynb"
    nbformat.write(nb, path)
    assert main([str(tmp_path)]) == 0
    saved = nbformat.read(path, as_version=4)
    assert saved.metadata.kernelspec == project_kernelspec()
    assert "widgets" not in saved.metadata
    outs = saved.cells[0].outputs
    assert [o.output_type for o in outs] == ["stream"] and outs[0].name == "stdout"
    assert outs[0].text.startswith("jobs: 100%|") and outs[0].text.endswith("\nafter\n")
    assert "\r" not in outs[0].text


def test_normalize_sets_the_kernelspec_and_nothing_else(tmp_path):
    from normalize_notebooks import dumps, normalize, project_kernelspec

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    before = path.read_text(encoding="utf-8")
    assert normalize(path) is True
    after = path.read_text(encoding="utf-8")
    expected = json.loads(before)
    expected["metadata"]["kernelspec"] = project_kernelspec()
    assert after == dumps(expected)
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert changed and all("display_name" in line for line in changed), changed
    assert normalize(path) is False  # a second run leaves the file alone
