"""Notebooks are written clean, however they are written: by the runner (make run), by
JupyterLab's save and autosave (make lab's pre-save hook), by the normalizer script.
The runner saves what a reader would see of progress bars, not every redraw."""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from normalize_notebooks import clean_outputs, collapse_redraws

ROOT = Path(__file__).resolve().parents[1]


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


def test_normalize_sets_the_kernelspec_and_changes_nothing_else_of_a_clean_notebook(tmp_path):
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


def dirty_notebook() -> dict:
    """A notebook as JupyterLab holds it after a run: widget bars, blank streams, state."""
    return {
        "cells": [{"cell_type": "code", "execution_count": 1, "id": "a1", "metadata": {},
                   "source": "train()", "outputs": [
                       {"output_type": "display_data", "metadata": {}, "data": {
                           "application/vnd.jupyter.widget-view+json": {"model_id": "m1"},
                           "text/plain": "HBox(children=(...))"}},
                       {"output_type": "stream", "name": "stderr", "text": "\n"},
                       {"output_type": "stream", "name": "stdout", "text": ["loss 0.1\n"]},
                       {"output_type": "display_data", "metadata": {},
                        "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}}]},
                  {"cell_type": "markdown", "id": "b2", "metadata": {}, "source": "# Notes"}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"},
                     "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}},
        "nbformat": 4, "nbformat_minor": 5}


def assert_clean_with_the_users_outputs(nb: dict) -> None:
    from normalize_notebooks import project_kernelspec

    assert nb["metadata"]["kernelspec"] == project_kernelspec()
    assert "widgets" not in nb["metadata"]
    outs = nb["cells"][0]["outputs"]
    assert [o["output_type"] for o in outs] == ["stream", "display_data"], outs
    assert "".join(outs[0]["text"]) == "loss 0.1\n" and "image/png" in outs[1]["data"]
    assert "".join(nb["cells"][1]["source"]) == "# Notes"


def test_pre_save_hook_cleans_a_course_notebook_and_keeps_the_users_outputs():
    from normalize_notebooks import pre_save_hook

    model = {"type": "notebook", "format": "json", "content": dirty_notebook()}
    pre_save_hook(model=model, path="notebooks/03_latent_ode_vae.ipynb", contents_manager=None)
    assert_clean_with_the_users_outputs(model["content"])


@pytest.mark.parametrize("path,kind", [("scratch.ipynb", "notebook"),
                                       ("notebooks/scratch.ipynb", "notebook"),
                                       ("notebooks/01_x.ipynb", "file")])
def test_pre_save_hook_leaves_other_files_alone(path, kind):
    from normalize_notebooks import pre_save_hook

    model = {"type": kind, "format": "json", "content": dirty_notebook()}
    pre_save_hook(model=model, path=path, contents_manager=None)
    assert model["content"] == dirty_notebook()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_as_make_lab_starts_it_saves_notebooks_clean(tmp_path):
    """End to end: the server that `make lab` starts (its command, from `make -n lab`),
    sent a save of a dirty course notebook as JupyterLab's save and autosave send it."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-s", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.replace("\\\n", " ")
    dry = next(line for line in dry.splitlines() if " -m jupyter lab " in line)
    args = shlex.split(dry)
    assert "--config=scripts/jupyter_server_config.py" in args, dry
    (tmp_path / "notebooks").mkdir()
    port, token = free_port(), "test-token"
    args[0] = sys.executable  # the recipe's .venv/bin/python is this one under make test
    args = [a for a in args if not a.startswith("--ServerApp.root_dir=")]
    args += [f"--ServerApp.root_dir={tmp_path}", f"--port={port}", "--no-browser",
             f"--IdentityProvider.token={token}"]
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = tmp_path / "server.log"  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/status?token={token}", timeout=2)
                break
            except OSError as err:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"jupyter lab did not start: {log.read_text()}"
                                         ) from err
                time.sleep(0.5)
        body = json.dumps({"type": "notebook", "format": "json", "content": dirty_notebook()})
        req = urllib.request.Request(f"{base}/contents/notebooks/02_x.ipynb?token={token}",
                                     data=body.encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=30).status in (200, 201)
    finally:
        server.terminate()
        server.wait(timeout=30)
    saved = json.loads((tmp_path / "notebooks" / "02_x.ipynb").read_text(encoding="utf-8"))
    assert_clean_with_the_users_outputs(saved)
