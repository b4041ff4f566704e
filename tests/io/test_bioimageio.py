"""bioimage.io packages: bioimageio.core's own model test passes offline, the test output is napari-msd's prediction,
and the package loads back as the exact version; bad inputs get one line."""

from __future__ import annotations

import hashlib
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_msd.base.inputs import InputSpec
from napari_msd.base.normalization import Normalization
from napari_msd.errors import NapariMsdError
from napari_msd.inference.predictor import Predictor
from napari_msd.io import ModelFileError, load_model, read_metadata, save_model
from napari_msd.io import bioimageio as bio
from napari_msd.models import UNet

from helpers import networks

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

IMAGE = networks.image((70, 90), seed=3)  # uint8, not a multiple of the U-Net's pooling


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test: packages are written and tested without internet."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _unet3d() -> UNet:
    torch.manual_seed(1)
    return UNet(1, 2, ndim=3, depth=1, base_channels=2, anisotropic_levels=1).eval()


def _model(kind: str) -> tuple[torch.nn.Module, InputSpec]:
    if kind == "msd":
        return networks.msd(), InputSpec()
    if kind == "unet":
        return networks.unet(), InputSpec()
    if kind == "msd-2.5d":
        return networks.msd(in_channels=3, depth=4), InputSpec("2.5d", 3)
    if kind == "msd-3d":
        return networks.msd(ndim=3, depth=3, dilations=(1, 2)), InputSpec("3d")
    return _unet3d(), InputSpec("3d")


def _metadata(net: torch.nn.Module, spec: InputSpec):
    meta = networks.metadata(net, spec)
    n = int(net.out_channels)
    meta.class_names, meta.class_colors = ["membrane", "interior", "mitochondrion"][:n], meta.class_colors[:n]
    return meta


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    """A 2D MS-D and a 2D U-Net exported from model files with the training image, written once."""
    root = tmp_path_factory.mktemp("bioimageio")
    made = {}
    for kind in ("msd", "unet"):
        net, spec = _model(kind)
        msd_file = save_model(
            root / f"{kind}.msd", net, _metadata(net, spec), provenance={"metrics": {"mean_iou": 0.5}}
        )
        made[kind] = bio.export_package(msd_file, root / f"{kind}.zip", test_image=IMAGE)
    return made


def _member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def _array(path: Path, name: str) -> np.ndarray:
    import io

    return np.load(io.BytesIO(_member(path, name)))


def _rdf(path: Path) -> dict:
    return yaml.safe_load(_member(path, "rdf.yaml"))


def _passed(summary) -> bool:
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]
    assert not failed, failed
    return summary.status == "passed"


# -- bioimageio.core runs the packages --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["msd", "unet"])
def test_bioimageio_core_model_test_passes_offline(packages, kind, offline):
    from bioimageio.core import test_model

    summary = test_model(packages[kind])
    assert _passed(summary)
    names = [d.name for d in summary.details]
    assert "Reproduce test outputs from test inputs (torchscript)" in names
    assert sum("Run torchscript inference" in n for n in names) >= 4  # other sizes and batch sizes, too


@pytest.mark.parametrize("kind", ["msd-2.5d", "msd-3d", "unet-3d"])
def test_2_5d_and_3d_models_export_and_pass(kind, tmp_path, offline):
    from bioimageio.core import test_model

    net, spec = _model(kind)
    volume = networks.image((9, 40, 36), seed=1)
    path = bio.export_package((net, _metadata(net, spec)), tmp_path / "m.zip", test_image=volume)
    assert _passed(test_model(path))
    x, expected = _array(path, bio.TEST_INPUT), _array(path, bio.TEST_OUTPUT)
    if spec.mode == "2.5d":  # the 3 slices around the middle as channels; the middle one is predicted
        assert x.shape == (1, 3, 40, 36) and expected.shape == (1, 3, 40, 36)
        np.testing.assert_array_equal(x[0], volume[3:6].astype(np.float32))
        channels = _rdf(path)["inputs"][0]["axes"][1]["channel_names"]
        assert channels == ["z-1", "z+0", "z+1"]
        predicted = Predictor(net, _metadata(net, spec)).predict(volume)[:, 4]
        np.testing.assert_allclose(expected[0], predicted, atol=1e-6)
    else:
        assert x.ndim == 5 and expected.shape[:2] == (1, net.out_channels) and expected.shape[2:] == x.shape[2:]
        np.testing.assert_allclose(expected[0], Predictor(net, _metadata(net, spec)).predict(x[0, 0]), atol=1e-6)


def test_a_2d_model_takes_its_test_input_from_the_middle_plane_of_a_volume(tmp_path):
    net = networks.msd()
    meta = _metadata(net, InputSpec(orientations=("xz",)))
    volume = networks.image((30, 20, 24), seed=4)
    path = bio.export_package((net, meta), tmp_path / "m.zip", test_image=volume)
    np.testing.assert_array_equal(_array(path, bio.TEST_INPUT)[0, 0], volume[:, 10, :])
    expected = Predictor(net, meta).predict(volume)[:, :, 10, :]
    np.testing.assert_allclose(_array(path, bio.TEST_OUTPUT)[0], expected, atol=1e-6)


def test_a_cpu_predicting_in_bfloat16_still_exports_float32_test_outputs(tmp_path):
    from napari_msd.models.precision import inference_precision, set_inference_precision

    net = networks.msd()
    meta = _metadata(net, InputSpec())
    with inference_precision("float32"):
        expected = Predictor(net, meta).predict(IMAGE)
    set_inference_precision("bfloat16")  # as "auto" chooses on a CPU with fast bfloat16 products
    path = bio.export_package((net, meta), tmp_path / "m.zip", test_image=IMAGE)  # the TorchScript copy agrees
    np.testing.assert_array_equal(_array(path, bio.TEST_OUTPUT)[0], expected)


# -- what the package holds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["msd", "unet"])
def test_test_output_is_napari_msds_prediction_of_a_crop_of_the_image(packages, kind):
    x, expected = _array(packages[kind], bio.TEST_INPUT), _array(packages[kind], bio.TEST_OUTPUT)
    model, meta = load_model(packages[kind])
    rows, cols = x.shape[2:]
    if kind == "unet":
        assert (rows, cols) == (68, 88)  # multiples of the pooling factor 4, around the middle
    else:
        assert (rows, cols) == IMAGE.shape
    top, left = (IMAGE.shape[0] - rows) // 2, (IMAGE.shape[1] - cols) // 2
    np.testing.assert_array_equal(x[0, 0], IMAGE[top : top + rows, left : left + cols])
    assert x.dtype == np.float32 and expected.dtype == np.float32
    np.testing.assert_array_equal(expected[0], Predictor(model, meta).predict(x[0, 0]))
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)


def test_description_names_classes_preprocessing_citation_and_files(packages):
    rdf = _rdf(packages["msd"])
    norm = Normalization(20.0, 230.0)
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["membrane", "interior", "mitochondrion"]
    assert [a.get("id", a["type"]) for a in rdf["inputs"][0]["axes"]] == ["batch", "channel", "y", "x"]
    ops = rdf["inputs"][0]["preprocessing"]
    assert [op["id"] for op in ops] == ["ensure_dtype", "scale_linear", "scale_linear", "ensure_dtype"]
    assert ops[1]["kwargs"] == {"gain": 1.0, "offset": -20.0}
    assert ops[2]["kwargs"] == {"gain": 1.0 / (norm.high - norm.low), "offset": 0.0}
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "softmax"
    assert rdf["cite"][0]["doi"] == "10.1073/pnas.1715832114"
    assert _rdf(packages["unet"])["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert set(rdf["weights"]) == {"torchscript"} and rdf["license"] == bio.DEFAULT_LICENSE
    assert rdf["config"]["napari_msd"]["model_file"] == bio.MODEL_ATTACHMENT and rdf["covers"]
    assert "http" not in _member(packages["msd"], "rdf.yaml").decode()  # nothing for a validator to fetch
    with zipfile.ZipFile(packages["msd"]) as archive:
        assert {bio.WEIGHTS_FILE, bio.MODEL_ATTACHMENT, bio.COVER, bio.README} <= set(archive.namelist())


def test_preprocessing_reproduces_the_normalisation_bit_for_bit(packages):
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import get_test_input_sample

    descr = load_model_description(packages["msd"], perform_io_checks=False)
    sample = get_test_input_sample(descr)
    x = sample.members["raw"].data.to_numpy().copy()
    with create_prediction_pipeline(descr, devices=["cpu"]) as pipeline:
        pipeline.apply_preprocessing(sample)
    normalised = sample.members["raw"].data.to_numpy()
    _, meta = load_model(packages["msd"])
    np.testing.assert_array_equal(normalised, Normalization.from_dict(meta.normalization)(x))


# -- TorchScript ------------------------------------------------------------------------------------------------------
# -- importing -----------------------------------------------------------------------------------------------------
def test_round_trip_restores_the_exact_version(packages, tmp_path):
    for path in packages.values():
        original = path.with_suffix(".msd")
        assert bio.is_package(path) and not bio.is_package(original)
        assert read_metadata(path).to_dict() == read_metadata(original).to_dict()
        model, meta = bio.load_package(path)
        reference, _ = load_model(original)
        state, expected = model.state_dict(), reference.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
        image = networks.image((33, 47), seed=5)
        np.testing.assert_array_equal(Predictor(model, meta).predict(image), Predictor(reference, meta).predict(image))
        assert meta.class_names == ["membrane", "interior", "mitochondrion"] and meta.provenance["metrics"]


def test_exported_from_a_version_in_memory_keeps_its_metadata(tmp_path):
    net = networks.unet()
    meta = _metadata(net, InputSpec())
    meta.class_colors = ["#112233", "#445566", "#778899"]
    meta.provenance = {"steps": 7, "created": "2025-01-01T00:00:00+00:00"}
    path = bio.export_package((net, meta), tmp_path / "v.zip")  # a synthetic test input
    model, loaded = load_model(path)
    assert {**loaded.to_dict(), "provenance": {}} == {**meta.to_dict(), "provenance": {}}
    assert loaded.provenance["steps"] == 7 and loaded.provenance["created"] == meta.provenance["created"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))
    x = _array(path, bio.TEST_INPUT)
    assert x.shape == (1, 1, 128, 128) and 20.0 <= x.min() < x.max() <= 230.0  # spans the normalisation
    again = bio.export_package((net, meta), tmp_path / "again.zip")
    np.testing.assert_array_equal(_array(again, bio.TEST_INPUT), x)  # deterministic


def _rewrite_zip(source: Path, target: Path, edit_rdf=None, replace: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "rdf.yaml" and edit_rdf is not None:
                rdf = yaml.safe_load(data)
                edit_rdf(rdf)
                data = yaml.safe_dump(rdf).encode()
            data = (replace or {}).get(name, data)
            if data is not None:
                dst.writestr(name, data)
    return target


def _assert_one_line(path: Path, *phrases: str, error=ModelFileError) -> None:
    for read in (load_model, read_metadata, bio.load_package):
        with pytest.raises(error) as info:
            read(path)
        message = str(info.value)
        assert isinstance(info.value, NapariMsdError) and "\n" not in message and str(path) in message
        for phrase in phrases:
            assert phrase in message, message


def test_a_package_not_made_by_napari_msd_is_refused_with_one_line(packages, tmp_path):
    foreign = _rewrite_zip(packages["msd"], tmp_path / "foreign.zip", lambda rdf: rdf.pop("config"))
    assert bio.is_package(foreign)
    _assert_one_line(foreign, "not a napari-msd export", "bioimageio.core", error=bio.PackageError)


def test_damaged_packages_are_refused_with_one_line(packages, tmp_path):
    member = bio.MODEL_ATTACHMENT
    data = bytearray(_member(packages["msd"], member))
    data[-1] ^= 1
    tampered = _rewrite_zip(packages["msd"], tmp_path / "tampered.zip", replace={member: bytes(data)})
    _assert_one_line(tampered, "corrupted or was modified", error=bio.PackageError)

    def rehash(rdf):  # a consistent package around a damaged model file: the model file's own checksum
        rdf["attachments"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()

    consistent = _rewrite_zip(packages["msd"], tmp_path / "rehashed.zip", rehash, replace={member: bytes(data)})
    _assert_one_line(consistent, "corrupted or was modified")
    missing = _rewrite_zip(packages["msd"], tmp_path / "missing.zip", replace={member: None})
    _assert_one_line(missing, "lacks its napari-msd model file", error=bio.PackageError)
    garbage = _rewrite_zip(packages["msd"], tmp_path / "garbage.zip", replace={member: b"not safetensors"})
    rdf = _rdf(garbage)
    assert rdf["attachments"][0]["sha256"]  # the package's SHA-256 catches it first
    _assert_one_line(garbage, "corrupted or was modified")


def test_other_zips_are_not_packages(tmp_path):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert not bio.is_package(plain)
    _assert_one_line(plain, "not a bioimage.io model package")
    checkpoint = tmp_path / "checkpoint.zip"
    torch.save({"w": torch.zeros(2)}, checkpoint)
    with pytest.raises(ModelFileError, match="PyTorch pickle checkpoint"):
        load_model(checkpoint)


# -- refusals when exporting -----------------------------------------------------------------------------------------
def test_an_existing_file_is_never_replaced_silently(packages, tmp_path):
    target = tmp_path / "taken.zip"
    target.write_bytes(b"keep me")
    net = networks.msd()
    source = (net, _metadata(net, InputSpec()))
    with pytest.raises(bio.PackageError, match="already exists; pass overwrite=True") as info:
        bio.export_package(source, target)
    assert "\n" not in str(info.value) and target.read_bytes() == b"keep me"
    assert bio.export_package(source, target, overwrite=True) == target and bio.is_package(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize(
    "call, phrase",
    [
        (lambda src, d: bio.export_package(src, d / "model.msd"), "a bioimage.io package is a .zip file"),
        (lambda src, d: bio.export_package(src, d / "missing" / "m.zip"), "does not exist"),
        (lambda src, d: bio.export_package(src, d), "is a directory"),
        (lambda src, d: bio.export_package(src, d / "m.zip", license="cc-by-4.0"), "did you mean CC-BY-4.0?"),
        (lambda src, d: bio.export_package(src, d / "m.zip", authors=["a/b"]), "authors must be names"),
        (lambda src, d: bio.export_package(src, d / "m.zip", test_image=np.zeros((2, 3, 4, 5))), "4 dimensions"),
        (lambda src, d: bio.export_package(src, d / "m.zip", test_image=42), "test_image must be an array"),
        (lambda src, d: bio.export_package(d / "none.msd", d / "m.zip"), "does not exist"),
        (lambda src, d: bio.export_package(src, d / "m.zip", test_image=d / "no.tif"), "no such file"),
        (lambda src, d: bio.export_package((src[0],), d / "m.zip"), "(model, ModelMetadata) pair"),
    ],
)
def test_bad_inputs_get_one_line(call, phrase, tmp_path):
    net = networks.msd()
    with pytest.raises(NapariMsdError) as info:
        call((net, _metadata(net, InputSpec())), tmp_path)
    assert phrase in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.zip"))


def test_a_2_5d_model_needs_a_volume_and_classes_need_distinct_names(tmp_path):
    net, spec = _model("msd-2.5d")
    with pytest.raises(bio.PackageError, match="needs a ZYX volume"):
        bio.export_package((net, _metadata(net, spec)), tmp_path / "a.zip", test_image=IMAGE)
    net = networks.msd()
    meta = _metadata(net, InputSpec())
    meta.class_names = ["a", "a", "b"]
    with pytest.raises(bio.PackageError, match="class names must differ"):
        bio.export_package((net, meta), tmp_path / "b.zip")


def test_missing_bioimageio_says_how_to_install_it_and_reading_needs_none(packages, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "bioimageio" or m.startswith("bioimageio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "bioimageio", None)
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    net = networks.msd()
    with pytest.raises(bio.PackageError, match=r"pip install 'napari-msd\[bioimageio\]'"):
        bio.export_package((net, _metadata(net, InputSpec())), tmp_path / "m.zip")
    assert load_model(packages["msd"])[1].arch == "msd"


@pytest.mark.parametrize("arch", ["munet", "gated_unet"])
def test_the_u_net_family_exports_and_passes(arch, tmp_path, offline):
    from bioimageio.core import test_model

    from napari_msd.models import build_model

    torch.manual_seed(0)
    net = build_model(arch, {"in_channels": 1, "out_channels": 2, "depth": 1, "base_channels": 4}).eval()
    model_path = save_model(
        tmp_path / f"{arch}.msd",
        net,
        class_names=["membrane", "interior"],
        normalization={"method": "percentile", "low": 0.0, "high": 255.0, "percentiles": [1, 99]},
        input_spec={"mode": "2d", "slices": 1, "orientations": ["xy"]},
    )
    package = bio.export_package(model_path, tmp_path / f"{arch}.zip", test_image=IMAGE)
    assert test_model(package).status == "passed"
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert "Architecture:" in rdf["description"]
    loaded, meta = load_model(package)
    assert meta.arch == arch


def test_a_model_with_forest_channels_is_refused_with_one_line(tmp_path):
    from napari_msd.models.registry import build_model

    forest = {"n_classes": 2, "classes": [1, 2], "n_features": 49, "sigmas": [1.0], "node_counts": [1], "depths": [0]}
    net = build_model("msd", {"in_channels": 3, "out_channels": 2, "depth": 2, "forest": forest}).eval()
    with pytest.raises(bio.PackageError, match="train a model without the forest channels") as info:
        bio.export_package((net, _metadata(net, InputSpec())), tmp_path / "f.zip")
    assert "\n" not in str(info.value) and not (tmp_path / "f.zip").exists()
