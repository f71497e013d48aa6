"""Execute notebooks in place, each in a fresh kernel, in name order.

    python scripts/run_notebooks.py [FOLDER_OR_NOTEBOOK ...]   (default: notebooks/)

Progress bars redraw their line with carriage returns; a saved notebook would
keep every redraw (megabytes of text). Before saving, each stream output is
collapsed to what a terminal shows: the last redraw of each line.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def collapse_redraws(text: str) -> str:
    """What a terminal shows of `text`: per line, only what follows the last '\\r'."""
    lines = text.split("\n")
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)


def clean_outputs(nb, sep: str = "") -> None:
    """Merge each run of consecutive stream outputs of one name, then collapse redraws.

    The kernel sends every redraw as its own output; only merged do the carriage
    returns of one redraw apply to the text of the one before.
    """
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
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
            cell["outputs"] = merged


def notebooks_in(args: list[str]) -> list[Path]:
    paths = []
    for arg in args or ["notebooks"]:
        p = Path(arg)
        paths += sorted(p.glob("[0-9]*.ipynb")) if p.is_dir() else [p]
    return paths


def main(args: list[str]) -> int:
    notebooks = notebooks_in(args)
    if not notebooks:
        print(f"no notebooks in {', '.join(args or ['notebooks'])} yet: nothing to run")
        return 0
    for path in notebooks:
        start = time.perf_counter()
        print(f"running {path} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=None, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        finally:
            clean_outputs(nb)
            nbformat.write(nb, path)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
