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
* The notebook's kernelspec is the project kernel's, so that opening it in
  JupyterLab (`make lab`) changes nothing.

The cleaning is `normalize_notebooks.clean`, which JupyterLab's pre-save hook
(`make lab`) applies to every save too.
"""

import os
import sys
import time

import nbformat
from nbclient import NotebookClient

# Run as a script, this file's folder (scripts/) is first on sys.path, so its sibling imports.
from normalize_notebooks import clean, notebooks_in, project_kernelspec


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
            clean(nb, kernelspec)  # what the pre-save hook of make lab does too
            nbformat.write(nb, path)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
