"""The core (models, base, io, inference, training) and the CLI's headless commands never load napari or Qt."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = [f"napari_msd.{name}" for name in ("models", "base", "io", "inference", "objects", "training")]

GUI_MODULES = ["napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy"]


def _loaded_gui_modules(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {GUI_MODULES!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["napari_msd"] + [m for m in CORE if importlib.util.find_spec(m)])
def test_core_import_loads_no_gui(module):
    assert _loaded_gui_modules(f"import {module}") == []


def test_cli_info_path_loads_no_gui():
    assert _loaded_gui_modules("import napari_msd.cli as c; c.build_parser()") == []


def test_import_linter_contract_holds():
    """The same rule as a static check: no import of GUI packages anywhere below the core packages."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
