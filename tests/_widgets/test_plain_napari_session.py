"""napari started the ordinary way, the sample opened, Train and Predict pressed: no crash, and torch's compiler
stack (which crashes a process running software OpenGL when loaded after it) never loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plain_napari_session.py"


def test_train_and_predict_from_a_plain_napari_session():
    assert os.environ.get("DISPLAY"), "needs an X server (pytest-xvfb provides one)"
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("OK:")
