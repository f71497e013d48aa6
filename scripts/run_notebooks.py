"""Execute notebooks in place, each in a fresh kernel, in name order.

    python scripts/run_notebooks.py [FOLDER_OR_NOTEBOOK ...]   (default: notebooks/)

What is saved is what a reader of the committed notebook should see:

* Progress bars are text (`NODE_PROGRESS=text`, see `nbutils.progress`): the
  kernel has no frontend to draw widgets, and saved widgets are state blobs that
  GitHub cannot show. Text bars redraw their line with carriage returns, and a
  saved notebook would keep every redraw (megabytes of text), so each stream
  output is collapsed to what a terminal shows: the last redraw of each line.
* As a safety net for code that draws bars another way: stream outputs left
  empty or blank (a lone newline, a cleared bar) are dropped, and so are widget
  outputs and the notebook's widget state.
* The notebook's kernelspec is the project kernel's (`normalize_notebooks.py`),
  so that opening it in JupyterLab (`make lab`) changes nothing.
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from normalize_notebooks import notebooks_in, project_kernelspec  # noqa: E402

WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json")


def collapse_redraws(text: str) -> str:
    """What a terminal shows of `text`: per line, only what follows the last '\\r'.

    A line that was redrawn to blanks (a bar cleared with `leave=False`) is dropped.
    """
    out = []
    for line in text.split("\n"):
        shown = line.rstrip("\r").rsplit("\r", 1)[-1]
        if "\r" in line and not shown.strip():
            continue
        out.append(shown)
    return "\n".join(out)


def is_widget(out) -> bool:
    return any(mime in out.get("data", {}) for mime in WIDGET_MIMES)


def clean_outputs(nb, sep: str = "") -> None:
    """Merge each run of consecutive stream outputs of one name, collapse redraws, and
    drop blank stream outputs, widget outputs and the notebook's widget state.

    The kernel sends every redraw as its own output; only merged do the carriage
    returns of one redraw apply to the text of the one before.
    """
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            if is_widget(out):
                continue
            prev = merged[-1] if merged else None
            if (out.get("output_type") == "stream" and prev is not None
                    and prev.get("output_type") == "stream" and prev["name"] == out["name"]):
                glue = sep if not prev["text"].endswith("\n") else ""
                prev["text"] += glue + out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = collapse_redraws(out["text"])
        if "outputs" in cell:
            cell["outputs"] = [o for o in merged
                               if o.get("output_type") != "stream" or o["text"].strip()]
    nb.metadata.pop("widgets", None)


def main(args: list[str]) -> int:
    notebooks = notebooks_in(args)
    if not notebooks:
        print(f"no notebooks in {', '.join(args or ['notebooks'])} yet: nothing to run")
        return 0
    # The kernels inherit this: text progress bars on stdout (nbutils.progress).
    os.environ.setdefault("NODE_PROGRESS", "text")
    kernelspec = project_kernelspec()
    for path in notebooks:
        start = time.perf_counter()
        print(f"running {path} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=None, kernel_name=kernelspec["name"],
                                store_widget_state=False,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        finally:
            clean_outputs(nb)
            nb.metadata["kernelspec"] = dict(kernelspec)
            nbformat.write(nb, path)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
