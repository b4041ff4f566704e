"""README followed literally on a fresh virtual environment (scripts/fresh_machine.sh): the install command, the
headless demo, napari started by hand with Train and Predict pressed, and the sample through the CLI.

It builds a new environment (a few minutes), so it runs in CI (``CI=true``) or when NAPARI_MSD_FRESH_MACHINE=1."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fresh_machine.sh"
WANTED = os.environ.get("CI") == "true" or os.environ.get("NAPARI_MSD_FRESH_MACHINE") == "1"


@pytest.mark.skipif(not WANTED, reason="builds a fresh environment: runs in CI or with NAPARI_MSD_FRESH_MACHINE=1")
def test_readme_on_a_fresh_machine(tmp_path):
    assert shutil.which("xvfb-run"), "needs xvfb-run (apt-get install xvfb xauth)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "TOX_"))}
    env.setdefault("TORCH_SPEC", "torch==2.13.0")  # the CPU build, as README advises without a GPU
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".tox" not in p)
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "fresh")], capture_output=True, text=True, timeout=2400, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("OK: README followed")
