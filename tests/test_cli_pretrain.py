"""``napari-msd pretrain`` and ``train --init``: self-supervised weights from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_msd.cli import main
from napari_msd.io import read_metadata
from napari_msd.training.pretrain import load_pretrained

NET = ["--depth", "3", "--patch-size", "32", "--batch-size", "2"]


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (2, 48, 48)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 5:15, 5:40] = 1
    labels[:, 30:40, 5:40] = 2
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    return tmp_path / "image.tif", tmp_path / "labels.tif"


def test_pretrain_then_train_from_the_weights(pair, tmp_path, capsys, accept_any_network):
    image, labels = pair
    weights = tmp_path / "em.pretrained"
    assert main(["pretrain", str(image), "-o", str(weights), "--steps", "2", "--quiet", *NET]) == 0
    out = capsys.readouterr().out
    assert f"saved {weights}: 2 steps" in out and f"--init {weights}" in out
    body = load_pretrained(weights)
    assert body.steps == 2 and body.model_config["depth"] == 3 and body.image_key
    model = tmp_path / "m.msd"
    assert (
        main(
            [
                "train",
                str(image),
                str(labels),
                "--init",
                str(weights),
                "-o",
                str(model),
                "--steps",
                "2",
                "--quiet",
                *NET,
            ]
        )
        == 0
    )
    prov = read_metadata(model).provenance
    assert prov["pretrained"]["steps"] == 2 and prov["pretrained"]["file"] == "em.pretrained"
    assert read_metadata(model).normalization == body.normalization


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_pretrain_refuses_bad_input_with_one_line(pair, tmp_path, capsys):
    image, labels = pair
    existing = tmp_path / "taken.pretrained"
    existing.write_bytes(b"keep me")
    assert main(["pretrain", str(image), "-o", str(existing), "--steps", "1", *NET]) == 2
    assert "already exists" in _one_error_line(capsys) and existing.read_bytes() == b"keep me"
    assert main(["pretrain", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "w"), "--steps", "1", *NET]) == 2
    assert "nope.tif" in _one_error_line(capsys)
    assert main(["pretrain", str(image), "-o", str(tmp_path / "missing" / "w"), "--steps", "1", *NET]) == 2
    assert "does not exist; create it first" in _one_error_line(capsys)
    assert not (tmp_path / "w").exists()


def test_train_init_refuses_weights_of_another_network(pair, tmp_path, capsys):
    image, labels = pair
    weights = tmp_path / "w.pretrained"
    assert main(["pretrain", str(image), "-o", str(weights), "--steps", "1", "--quiet", *NET]) == 0
    capsys.readouterr()
    deeper = ["--depth", "4", "--patch-size", "32", "--batch-size", "2"]
    assert (
        main(
            [
                "train",
                str(image),
                str(labels),
                "--init",
                str(weights),
                "-o",
                str(tmp_path / "m.msd"),
                "--steps",
                "1",
                "--quiet",
                *deeper,
            ]
        )
        == 2
    )
    assert "pretrain again" in _one_error_line(capsys)
    assert (
        main(
            [
                "train",
                str(image),
                str(labels),
                "--init",
                str(labels),
                "-o",
                str(tmp_path / "m.msd"),
                "--steps",
                "1",
                "--quiet",
                *NET,
            ]
        )
        == 2
    )
    assert "not a napari-msd pretrained-weights file" in _one_error_line(capsys)
    assert (
        main(
            [
                "train",
                str(image),
                str(labels),
                "--init",
                str(weights),
                "--from",
                str(weights),
                "-o",
                str(tmp_path / "m.msd"),
                "--steps",
                "1",
                "--quiet",
                *NET,
            ]
        )
        == 2
    )
    assert "give one of the two" in _one_error_line(capsys)
    assert not (tmp_path / "m.msd").exists()
