"""The napari-msd command line: ``info`` and the error contract shared by every subcommand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_msd import __version__
from napari_msd.cli import _train_config, build_parser, main
from napari_msd.io import read_metadata, save_model
from napari_msd.models import MSDNet
from napari_msd.training.engine import TrainConfig
from napari_msd.training.optim import LR_SCHEDULES


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


# -- napari-msd train -------------------------------------------------------------------------------


@pytest.fixture
def stroke_files(tmp_path: Path) -> tuple[Path, Path]:
    """A two-texture 2D image (dark left, bright right) with a few strokes of each class."""
    rng = np.random.default_rng(0)
    image = rng.normal(60, 10, (64, 64)).astype(np.float32)
    image[:, 32:] += 120
    labels = np.zeros((64, 64), np.uint8)
    labels[8:56:8, 6:24] = 1
    labels[8:56:8, 40:58] = 2
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    return tmp_path / "image.npy", tmp_path / "labels.npy"


def _train(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["train", *args, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_a_model_that_info_reads(stroke_files, tmp_path, capsys):
    image, labels = stroke_files
    out = tmp_path / "texture.msd"
    code, stdout, _ = _train(
        [
            str(image),
            str(labels),
            "-o",
            str(out),
            "--depth",
            "6",
            "--steps",
            "30",
            "--patch-size",
            "32",
            "--validate-every",
            "10",
            "--class-names",
            "dark,bright",
        ],
        capsys,
    )
    assert code == 0 and out.exists()
    assert "finished (steps) after 30 steps" in stdout and str(out) in stdout
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == ["dark", "bright"] and info["config"]["depth"] == 6
    assert info["input"]["mode"] == "2d" and info["normalization"]["method"] == "percentile"
    assert info["provenance"]["steps"] == 30
    assert 0 <= info["effective_halo"] <= info["receptive_field"]  # measured after training, used for tiling


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-msd train: error: ")
    return lines[0]


def test_train_errors_are_one_line_and_write_nothing(stroke_files, tmp_path, capsys):
    image, labels = stroke_files
    out = tmp_path / "model.msd"
    base = ["-o", str(out), "--steps", "2", "--depth", "3"]

    def error(*args: str) -> str:
        code, _, err = _train([*args, *base], capsys)
        assert code == 2
        assert not out.exists()
        return _error_line(err)

    assert "no such file" in error(str(tmp_path / "missing.tif"), str(labels))
    np.save(tmp_path / "small.npy", np.zeros((32, 64), np.uint8))
    assert "differ in shape" in error(str(image), str(tmp_path / "small.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((64, 64), np.uint8))
    assert "no labeled pixel" in error(str(image), str(tmp_path / "empty.npy"))
    one = np.zeros((64, 64), np.uint8)
    one[10, 10:20] = 2
    np.save(tmp_path / "one.npy", one)
    assert "only class 2 is labeled" in error(str(image), str(tmp_path / "one.npy"))
    assert "needs a ZYX volume" in error(str(image), str(labels), "--slices", "5")
    np.save(tmp_path / "float.npy", np.zeros((64, 64), np.float32))
    assert "labels must be integers" in error(str(image), str(tmp_path / "float.npy"))
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 64, 64), np.float32))
    assert "4" in error(str(tmp_path / "4d.npy"), str(labels))
    assert "--ndim 3" in error(str(image), str(labels), "--ndim", "3", "--slices", "3")
    assert "--replay" in error(str(image), str(labels), "--replay", str(image), str(labels))
    assert "edge-aware loss weight must be >= 0" in error(str(image), str(labels), "--edge-weight", "-1")
    assert "the teacher needs a weight >= 0" in error(str(image), str(labels), "--teacher-weight", "-1")
    assert "seen_tolerance is a share in [0, 1]" in error(str(image), str(labels), "--seen-tolerance", "1.5")


@pytest.mark.parametrize(
    "flag, expected", [([], TrainConfig.edge_weight), (["--edge-weight", "0"], 0.0), (["--edge-weight", "3.5"], 3.5)]
)
def test_train_edge_weight_reaches_the_engine(flag, expected, stroke_files, tmp_path):
    image, labels = stroke_files
    args = build_parser().parse_args(["train", str(image), str(labels), "-o", str(tmp_path / "m.msd"), *flag])
    assert _train_config(args).edge_weight == expected


@pytest.mark.parametrize("flag, expected", [([], TrainConfig.teacher_weight), (["--teacher-weight", "1"], 1.0)])
def test_train_teacher_weight_reaches_the_engine(flag, expected, stroke_files, tmp_path):
    image, labels = stroke_files
    args = build_parser().parse_args(["train", str(image), str(labels), "-o", str(tmp_path / "m.msd"), *flag])
    assert _train_config(args).teacher_weight == expected


@pytest.mark.parametrize("flag, expected", [([], TrainConfig.lr_schedule), (["--lr-schedule", "cosine"], "cosine")])
def test_train_lr_schedule_reaches_the_engine(flag, expected, stroke_files, tmp_path):
    image, labels = stroke_files
    args = build_parser().parse_args(["train", str(image), str(labels), "-o", str(tmp_path / "m.msd"), *flag])
    assert _train_config(args).lr_schedule == expected


def test_train_with_forest_channels_says_so_and_stores_the_forest(stroke_files, tmp_path, capsys):
    image, labels = stroke_files
    out = tmp_path / "forest.msd"
    args = [str(image), str(labels), "-o", str(out), "--depth", "4", "--steps", "4", "--patch-size", "32"]
    code, stdout, _ = _train([*args, "--forest-channels"], capsys)
    assert code == 0 and "input: the image and a random forest's 2 class probabilities" in stdout
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["forest"]["n_classes"] == 2 and info["config"]["in_channels"] == 3
    assert info["provenance"]["forest_channels"]["out_of_fold_forests"] == 2
    assert main(["predict", str(out), str(image), str(tmp_path / "pred.zarr"), "--quiet"]) == 0
    parser_args = build_parser().parse_args(["train", *args])
    assert _train_config(parser_args).forest_channels is TrainConfig.forest_channels is False


def test_train_with_bfloat16_products_says_so_and_the_choice_reaches_the_engine(stroke_files, tmp_path, capsys):
    image, labels = stroke_files
    out = tmp_path / "bf16.msd"
    args = [str(image), str(labels), "-o", str(out), "--depth", "6", "--steps", "30", "--patch-size", "32"]
    args += ["--validate-every", "10"]
    code, stdout, _ = _train([*args, "--precision", "bfloat16"], capsys)
    assert code == 0 and "; products in bfloat16" in stdout
    assert main(["info", str(out)]) == 0
    assert "bfloat16" in json.loads(capsys.readouterr().out)["provenance"]["precision"]
    assert _train_config(build_parser().parse_args(["train", *args])).precision == TrainConfig.precision == "float32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *args, "--precision", "half"])


def test_the_cli_offers_every_lr_schedule():
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    action = next(a for a in train._actions if a.dest == "lr_schedule")
    assert tuple(action.choices) == LR_SCHEDULES


@pytest.mark.parametrize("flag, expected", [([], TrainConfig.seen_tolerance), (["--seen-tolerance", "1"], 1.0)])
def test_train_seen_tolerance_reaches_the_engine(flag, expected, stroke_files, tmp_path):
    image, labels = stroke_files
    args = build_parser().parse_args(["train", str(image), str(labels), "-o", str(tmp_path / "m.msd"), *flag])
    assert _train_config(args).seen_tolerance == expected


def test_train_refuses_to_overwrite_a_model(stroke_files, tmp_path, capsys):
    image, labels = stroke_files
    out = tmp_path / "precious.msd"
    out.write_bytes(b"a model the user made")
    code, _, err = _train([str(image), str(labels), "-o", str(out), "--steps", "2"], capsys)
    assert code == 2 and "--overwrite" in _error_line(err)
    assert out.read_bytes() == b"a model the user made"


def test_train_fine_tunes_from_a_model(stroke_files, tmp_path, capsys):
    image, labels = stroke_files
    first, second = tmp_path / "v1.msd", tmp_path / "v2.msd"
    common = ["--steps", "10", "--patch-size", "32", "--validate-every", "5"]
    assert _train([str(image), str(labels), "-o", str(first), "--depth", "5", *common], capsys)[0] == 0
    code, _, _ = _train(
        [
            str(image),
            str(labels),
            "-o",
            str(second),
            "--from",
            str(first),
            "--replay",
            str(image),
            str(labels),
            *common,
        ],
        capsys,
    )
    assert code == 0
    assert main(["info", str(second)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["depth"] == 5
    assert info["provenance"]["fine_tuned_from"]["source"] == str(first)
    code, _, err = _train([str(image), str(labels), "-o", str(tmp_path / "v3.msd"), "--from", str(image)], capsys)
    assert code == 2 and "image.npy" in _error_line(err)


def test_train_refuses_to_save_a_collapsed_network(stroke_files, tmp_path, capsys, monkeypatch):
    """The engine judges every validation collapsed (its own tests show when): exit 2, one line, no file."""
    from napari_msd.training import health

    real = health.check
    monkeypatch.setattr(
        health,
        "check",
        lambda counts, painted, names, recall=None: health.Health(
            real(counts, painted, names, recall).fractions, collapsed="the network predicts dark on 99.5% of the pixels"
        ),
    )
    image, labels = stroke_files
    out = tmp_path / "collapsed.msd"
    code, _, err = _train(
        [
            str(image),
            str(labels),
            "-o",
            str(out),
            "--depth",
            "5",
            "--steps",
            "10",
            "--patch-size",
            "32",
            "--validate-every",
            "5",
        ],
        capsys,
    )
    line = _error_line(err)
    assert code == 2 and "no usable model after 10 steps: the network predicts dark" in line
    assert "nothing was saved" in line and not out.exists()


def test_train_refuses_the_image_given_as_labels(tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 254, (64, 64)).astype(np.uint8)
    image[0, 0] = 253
    np.save(tmp_path / "em.npy", image)
    out = tmp_path / "model.msd"
    code, _, err = _train([str(tmp_path / "em.npy"), str(tmp_path / "em.npy"), "-o", str(out), "--steps", "2"], capsys)
    line = _error_line(err)
    assert code == 2 and not out.exists()
    assert (
        "contain the value 253: is this the image? labels are 0 = unlabeled, 1..K = classes; K must be below 64" in line
    )


def test_train_refuses_an_output_folder_that_does_not_exist(stroke_files, tmp_path, capsys):
    image, labels = stroke_files
    missing = tmp_path / "results"
    code, _, err = _train([str(image), str(labels), "-o", str(missing / "model.msd"), "--steps", "2"], capsys)
    assert code == 2 and not missing.exists()
    assert _error_line(err).endswith(
        f"output folder {missing} does not exist; create it first (mkdir -p {missing}) or choose another -o"
    )


def test_a_short_timed_run_saves_with_a_warning_that_it_barely_learned(
    stroke_files, tmp_path, capsys, accept_any_network
):
    """--time that allows one step (a loaded machine): saved, exit 0, and the output says what that is worth."""
    image, labels = stroke_files
    out = tmp_path / "short.msd"
    code, stdout, _ = _train(
        [str(image), str(labels), "-o", str(out), "--depth", "5", "--patch-size", "32", "--time", "0.000001"], capsys
    )
    assert code == 0 and out.exists()
    assert "finished (time) after 1 steps" in stdout
    warning = [line for line in stdout.splitlines() if line.startswith("warning: trained only")]
    assert warning and warning[0].startswith("warning: trained only 1 steps in ")
    assert warning[0].endswith("s: the model has barely learned; train longer (--time/--steps)")
    assert "note: no time was left to measure the effective halo" in stdout
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["effective_halo"] is None and "not measured" in info["provenance"]["halo"]


def test_a_run_of_the_chosen_few_steps_gets_no_warning(stroke_files, tmp_path, capsys, accept_any_network):
    image, labels = stroke_files
    code, stdout, _ = _train(
        [
            str(image),
            str(labels),
            "-o",
            str(tmp_path / "m.msd"),
            "--depth",
            "4",
            "--steps",
            "3",
            "--patch-size",
            "32",
            "--validate-every",
            "3",
        ],
        capsys,
    )
    assert code == 0 and "warning: trained only" not in stdout


@pytest.mark.parametrize("arch", ["munet", "gated_unet"])
def test_train_the_u_net_family_by_name(arch, stroke_files, tmp_path, capsys, accept_any_network):
    image, labels = stroke_files
    out = tmp_path / f"{arch}.msd"
    net = ["--arch", arch, "--depth", "2", "--base-channels", "4"]
    run = ["--steps", "3", "--patch-size", "32", "--validate-every", "3"]
    code, stdout, _ = _train([str(image), str(labels), "-o", str(out), *net, *run], capsys)
    assert code == 0 and out.exists() and "finished (steps) after 3 steps" in stdout
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == arch and info["config"]["depth"] == 2 and info["config"]["base_channels"] == 4
    code, _, err = _train([str(image), str(labels), "-o", str(tmp_path / "w.msd"), *net, "--width", "2"], capsys)
    assert code == 2 and "--width is an MS-D setting" in _error_line(err)
    args = build_parser().parse_args(["train", str(image), str(labels), "-o", str(out), "--arch", arch])
    assert _train_config(args).dice_weight is None  # the network's own: MUNet's Dice weight, else none


def test_train_an_ensemble_into_one_file_and_retrain_it(stroke_files, tmp_path, capsys, accept_any_network):
    image, labels = stroke_files
    out = tmp_path / "ensemble.msd"
    run = ["--steps", "3", "--patch-size", "32", "--validate-every", "3"]
    net = ["--arch", "ensemble", "--members", "2", "--depth", "4"]
    code, stdout, _ = _train([str(image), str(labels), "-o", str(out), *net, *run], capsys)
    assert code == 0 and out.exists() and "finished (steps) after 6 steps" in stdout
    assert "an ensemble of 2 of 2 members" in stdout
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "ensemble" and [m["arch"] for m in info["config"]["members"]] == ["msd", "msd"]
    assert all(m["config"]["depth"] == 4 for m in info["config"]["members"])
    assert [m["seed"] for m in info["provenance"]["members"]] == [0, 1] and info["provenance"]["steps"] == 6
    child = tmp_path / "child.msd"
    code, stdout, _ = _train([str(image), str(labels), "-o", str(child), "--from", str(out), *run], capsys)
    assert code == 0 and child.exists() and main(["info", str(child)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "ensemble" and info["provenance"]["fine_tuned_from"]["source"] == str(out)
    unets = ["--arch", "ensemble", "--member-arch", "unet", "--depth", "2", "--base-channels", "4"]
    args = build_parser().parse_args(["train", str(image), str(labels), "-o", str(out), *unets])
    members = _train_config(args).model["members"]
    assert len(members) == 3 and members[0] == {"arch": "unet", "config": {"depth": 2, "base_channels": 4}}
    code, _, err = _train([str(image), str(labels), "-o", str(tmp_path / "w.msd"), "--members", "2"], capsys)
    assert code == 2 and "--arch ensemble" in _error_line(err)
    code, _, err = _train([str(image), str(labels), "-o", str(tmp_path / "w.msd"), *unets, "--width", "2"], capsys)
    assert code == 2 and "--width is an MS-D setting" in _error_line(err)


# -- napari-msd sample ------------------------------------------------------------------------------


def test_sample_writes_files_the_cli_reads_and_a_command_that_trains_on_them(
    tmp_path, capsys, monkeypatch, accept_any_network
):
    import shlex

    from napari_msd._sample_data import read_sample
    from napari_msd.io import open_image, read_labels

    folder = tmp_path / "new" / "sample"
    assert main(["sample", "-o", str(folder)]) == 0
    stdout = capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["ground_truth.tif", "image.tif", "strokes.tif"]
    sample = read_sample()
    np.testing.assert_array_equal(open_image(folder / "image.tif")[...], sample["image"])
    np.testing.assert_array_equal(read_labels(folder / "strokes.tif")[...], sample["strokes"])
    np.testing.assert_array_equal(read_labels(folder / "ground_truth.tif")[...], sample["ground_truth"])
    for name in ("image.tif", "strokes.tif", "ground_truth.tif"):
        assert str(folder / name) in stdout
    command = next(line for line in stdout.splitlines() if line.startswith("next: "))[len("next: ") :]
    assert command == (
        f"napari-msd train {folder / 'image.tif'} {folder / 'strokes.tif'} "
        '--class-names "membrane,cell interior" -o membranes.msd --time 60'
    )
    args = shlex.split(command)[1:]
    args[args.index("--time") :] = ["--steps", "2", "--depth", "3", "--patch-size", "32"]  # the same command, short
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--quiet"]) == 0
    assert read_metadata(tmp_path / "membranes.msd").class_names == ["membrane", "cell interior"]


def test_sample_never_overwrites(tmp_path, capsys):
    (tmp_path / "strokes.tif").write_bytes(b"strokes a user painted")
    assert main(["sample", "-o", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith("napari-msd sample: error: ") and "strokes.tif already exists" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["strokes.tif"]  # nothing written
    assert (tmp_path / "strokes.tif").read_bytes() == b"strokes a user painted"


def test_demo_screenshot_into_a_missing_folder_is_refused_before_opening_napari(tmp_path, capsys):
    missing = tmp_path / "shots"
    assert main(["demo", "--screenshot", str(missing / "demo.png")]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        f"napari-msd demo: error: output folder {missing} does not exist; create it first "
        f"(mkdir -p {missing}) or choose another --screenshot"
    )
    assert not missing.exists()


def test_a_bad_precision_setting_ends_any_command_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("NAPARI_MSD_PRECISION", "half")
    assert main(["sample", "-o", str(tmp_path / "sample")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-msd sample: error: NAPARI_MSD_PRECISION 'half' is not a precision; use one of")
    assert "\n" not in err and not (tmp_path / "sample").exists()
