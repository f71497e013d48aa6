"""Give notebooks the kernelspec of the project's kernel, and change nothing else.

    python scripts/normalize_notebooks.py [FOLDER_OR_NOTEBOOK ...]   (default: notebooks/)

JupyterLab writes the kernelspec of the kernel it starts into a notebook's
metadata as soon as the notebook opens; a notebook committed with another one
(`"Python 3"` where the kernel reports `"Python 3 (ipykernel)"`) shows up as
modified after merely being opened. This sets `metadata.kernelspec` to what the
installed ipykernel reports, found the way Jupyter's server finds it, and
rewrites the file in the layout Jupyter itself writes (one-space indent, sorted
keys), so the diff is the kernelspec's lines alone. Run with the project's
`.venv/bin/python`. `scripts/run_notebooks.py` does the same on every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def project_kernelspec() -> dict[str, str]:
    """{display_name, language, name} of the kernel that `make lab` starts for notebooks."""
    from ipykernel.kernelspec import KERNEL_NAME
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    return {"display_name": spec.display_name, "language": spec.language, "name": KERNEL_NAME}


def dumps(nb: dict) -> str:
    """A notebook as nbformat and JupyterLab write it."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def normalize(path: Path, kernelspec: dict[str, str] | None = None) -> bool:
    """Set the notebook's kernelspec; True when the file changed."""
    kernelspec = kernelspec or project_kernelspec()
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    nb.setdefault("metadata", {})["kernelspec"] = dict(kernelspec)
    text = dumps(nb)
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
        print(f"{path}: {'kernelspec set' if normalize(path, spec) else 'unchanged'}")
    print(f"kernelspec: {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
