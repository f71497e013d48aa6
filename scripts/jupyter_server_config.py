"""The Jupyter server's settings for `make lab` (passed with --config).

Saving a course notebook from JupyterLab, by hand or by its autosave, writes it
as `make run` does: the project kernel's kernelspec, no widget state or widget
views, no blank stream outputs (`normalize_notebooks.pre_save_hook`). The outputs
of the user's own run are kept. So `git status` shows a notebook as modified only
when its cells or outputs changed, and `make test` stays green.
"""

import importlib.util
import warnings
from pathlib import Path

# Jupyter executes this file inside the server, whose sys.path does not hold
# scripts/: load the sibling normalizer from its file.
_spec = importlib.util.spec_from_file_location(
    "normalize_notebooks", Path(__file__).resolve().with_name("normalize_notebooks.py"))
_normalizer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_normalizer)
pre_save_hook = _normalizer.pre_save_hook

c = get_config()  # noqa: F821 (traitlets provides it to config files)
c.ContentsManager.pre_save_hook = pre_save_hook
# JupyterLab applies the server's config twice, and the second time the contents
# manager warns that it overrides its pre-save hook, with the very same function.
warnings.filterwarnings("ignore", message=r"Overriding existing pre_save_hook \(pre_save_hook\)")
