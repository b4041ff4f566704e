"""The napari-msd command line: ``info`` and the error contract shared by every subcommand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_msd import __version__
from napari_msd.cli import main
from napari_msd.io import save_model
from napari_msd.models import MSDNet


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "membranes.msd"
    save_model(path, MSDNet(1, 2, depth=5), class_names=["membrane", "interior"], provenance={"steps": 12})
    return path


def test_info_prints_the_metadata_as_json(model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "msd"
    assert info["config"]["depth"] == 5
    assert info["class_names"] == ["membrane", "interior"]
    assert info["receptive_field"] == MSDNet(1, 2, depth=5).receptive_field
    assert info["provenance"]["steps"] == 12


@pytest.mark.parametrize("content", [None, b"not a model", b""])
def test_info_on_a_bad_file_exits_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.msd"
    if content is not None:
        path.write_bytes(content)
    assert main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-msd info: error:") and "bad.msd" in lines[0]


def test_console_script_is_installed_and_headless(model_file):
    script = Path(sys.executable).with_name("napari-msd")
    assert script.exists(), "the napari-msd console script is not installed"
    out = subprocess.run([str(script), "--version"], check=True, capture_output=True, text=True).stdout
    assert __version__ in out
    info = subprocess.run([str(script), "info", str(model_file)], check=True, capture_output=True, text=True)
    assert json.loads(info.stdout)["arch"] == "msd"


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
