"""The committed figures are worth printing: PNGs at 150 dpi or more.

`nbutils.setup` saves every figure at `nbutils.SAVE_DPI`; a PNG written another way
(or left over from an older run) fails here. GIFs stay at screen resolution to keep
the repository light.
"""

from pathlib import Path

import pytest
from PIL import Image

import nbutils

ROOT = Path(__file__).resolve().parents[1]
PNGS = sorted((ROOT / "assets").glob("*.png"))


def test_there_are_figures_and_the_setup_saves_at_print_resolution():
    assert PNGS
    assert nbutils.SAVE_DPI >= 150


@pytest.mark.parametrize("path", PNGS, ids=lambda p: p.name)
def test_png_is_saved_at_150_dpi_or_more(path):
    dpi = Image.open(path).info.get("dpi")
    # PNG stores pixels per metre as an integer: 150 dpi comes back as 149.9994
    assert dpi is not None and min(dpi) >= nbutils.SAVE_DPI - 0.5, f"{path.name}: {dpi}"
