"""Execute every notebook in a folder, in name order, in place, each in a fresh kernel."""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(folder: str = "notebooks") -> int:
    notebooks = sorted(Path(folder).glob("[0-9]*.ipynb"))
    if not notebooks:
        print(f"no notebooks in {folder}/ yet: nothing to run")
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
            nbformat.write(nb, path)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
