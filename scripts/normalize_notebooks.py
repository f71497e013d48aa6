"""Keep the course's notebooks clean: the project kernel's kernelspec, no widget state.

    python scripts/normalize_notebooks.py [FOLDER_OR_NOTEBOOK ...]   (default: notebooks/)

Three ways a notebook gets written, one cleaning for all of them (`clean`):

* `make run` (`scripts/run_notebooks.py`) cleans what it executed;
* `make lab` starts JupyterLab with `scripts/jupyter_server_config.py`, whose
  pre-save hook (`pre_save_hook`) cleans every save of a course notebook, by hand
  (Ctrl+S) or by JupyterLab's autosave;
* this script cleans notebooks saved some other way.

What cleaning does, and why:

* the kernelspec becomes the one the installed ipykernel reports (found the way
  Jupyter's server finds it): JupyterLab writes the kernelspec of the kernel it
  starts as soon as a notebook opens, so one committed with another
  (`"Python 3"` where the kernel says `"Python 3 (ipykernel)"`) shows up as
  modified after merely being opened;
* widget outputs and the notebook's widget state go: they are state blobs that
  GitHub cannot show and that change at every run (progress bars are widgets in
  JupyterLab, `nbutils.progress`);
* consecutive stream outputs are merged and their carriage-return redraws
  collapsed to what a terminal shows, and blank stream outputs are dropped.

Everything else stays, the outputs of the user's own run included. Files are
written in the layout Jupyter itself writes (one-space indent, sorted keys).
Run with the project's `.venv/bin/python`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json")
# The course's notebooks, as paths relative to the server's root or the repository.
COURSE_NOTEBOOK = re.compile(r"(^|/)notebooks/\d[^/]*\.ipynb$")


def project_kernelspec() -> dict[str, str]:
    """{display_name, language, name} of the kernel that `make lab` starts for notebooks."""
    from ipykernel.kernelspec import KERNEL_NAME
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    return {"display_name": spec.display_name, "language": spec.language, "name": KERNEL_NAME}


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


def is_widget(out: dict) -> bool:
    return any(mime in out.get("data", {}) for mime in WIDGET_MIMES)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def clean_outputs(nb: dict, sep: str = "") -> None:
    """Merge each run of consecutive stream outputs of one name, collapse redraws, and
    drop blank stream outputs, widget outputs and the notebook's widget state.

    The kernel sends every redraw as its own output; only merged do the carriage
    returns of one redraw apply to the text of the one before. Works on a plain
    dict (a server's model) as on an nbformat notebook.
    """
    for cell in nb["cells"]:
        merged: list[dict] = []
        for out in cell.get("outputs", []):
            if is_widget(out):
                continue
            prev = merged[-1] if merged else None
            if (out.get("output_type") == "stream" and prev is not None
                    and prev.get("output_type") == "stream" and prev["name"] == out["name"]):
                prev_text = _text(prev["text"])
                glue = sep if not prev_text.endswith("\n") else ""
                prev["text"] = prev_text + glue + _text(out["text"])
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = collapse_redraws(_text(out["text"]))
        if "outputs" in cell:
            cell["outputs"] = [o for o in merged
                               if o.get("output_type") != "stream" or o["text"].strip()]
    nb.get("metadata", {}).pop("widgets", None)


def clean(nb: dict, kernelspec: dict[str, str] | None = None) -> dict:
    """The cleaning every written course notebook gets (module docstring); in place."""
    clean_outputs(nb)
    nb.setdefault("metadata", {})["kernelspec"] = dict(kernelspec or project_kernelspec())
    return nb


def pre_save_hook(model: dict, path: str, contents_manager=None, **kwargs) -> None:
    """Jupyter's `ContentsManager.pre_save_hook`: clean a course notebook before it is
    written, whether the user saved it or JupyterLab's autosave did. Other files, and
    notebooks outside `notebooks/`, are saved as they are."""
    if model.get("type") == "notebook" and model.get("content") and COURSE_NOTEBOOK.search(path):
        clean(model["content"])


def dumps(nb: dict) -> str:
    """A notebook as nbformat and JupyterLab write it."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def normalize(path: Path, kernelspec: dict[str, str] | None = None) -> bool:
    """Clean the notebook file; True when the file changed."""
    raw = path.read_text(encoding="utf-8")
    text = dumps(clean(json.loads(raw), kernelspec))
    if text == raw:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def notebooks_in(args: list[str]) -> list[Path]:
    paths = []
    for arg in args or ["notebooks"]:
        p = Path(arg)
        paths += sorted(p.glob("[0-9]*.ipynb")) if p.is_dir() else [p]
    return paths


def main(args: list[str]) -> int:
    spec = project_kernelspec()
    for path in notebooks_in(args):
        print(f"{path}: {'cleaned' if normalize(path, spec) else 'unchanged'}")
    print(f"kernelspec: {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
