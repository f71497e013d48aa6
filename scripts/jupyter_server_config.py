"""The Jupyter server's settings for `make lab` (passed with --config).

Saving a course notebook from JupyterLab, by hand or by its autosave, writes it
as `make run` does: the project kernel's kernelspec, no widget state or widget
views, no blank stream outputs (`normalize_notebooks.pre_save_hook`). The outputs
of the user's own run are kept. So `git status` shows a notebook as modified only
when its cells or outputs changed, and `make test` stays green.
"""

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from normalize_notebooks import pre_save_hook  # noqa: E402

c = get_config()  # noqa: F821 (traitlets provides it to config files)
c.ContentsManager.pre_save_hook = pre_save_hook
# JupyterLab applies the server's config twice, and the second time the contents
# manager warns that it overrides its pre-save hook, with the very same function.
warnings.filterwarnings("ignore", message=r"Overriding existing pre_save_hook \(pre_save_hook\)")
