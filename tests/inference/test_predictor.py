"""Tiled prediction equals whole-image prediction, streams block by block and reads only block regions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import zarr

from napari_msd.base.inputs import InputSpec
from napari_msd.inference import BlockDone, Predictor
from napari_msd.io.model_file import save_model
from napari_msd.models import GatedUNet, MSDNet, MUNet

from helpers.arrays import CountingArray
from helpers.networks import image, metadata, msd, unet

CASES = {  # name: (network, input spec, image shape, block shape), blocks not dividing the image
    "msd-2d": (lambda: msd(), InputSpec(), (100, 90), (32, 25)),
    "msd-2.5d": (lambda: msd(in_channels=3), InputSpec("2.5d", 3), (6, 70, 60), (2, 32, 25)),
    "msd-xz": (lambda: msd(), InputSpec("2d", 1, ("xz",)), (6, 70, 60), (4, 3, 25)),
    "msd-3d": (lambda: msd(ndim=3, depth=4), InputSpec("3d"), (6, 70, 60), (4, 32, 25)),
    "unet-2d": (lambda: unet(), InputSpec(), (100, 90), (40, 36)),
    "munet-2d": (lambda: _unet_family(MUNet, fusion_radius=6), InputSpec(), (100, 90), (40, 36)),
    "munet-3d": (lambda: _unet_family(MUNet, ndim=3, fusion_radius=3), InputSpec("3d"), (10, 50, 44), (8, 16, 20)),
    "gated_unet-2d": (
        lambda: _unet_family(GatedUNet, skip_gates=["confidence", "channel+pixel"], squeeze_radius=8),
        InputSpec(),
        (100, 90),
        (40, 36),
    ),
}


def _unet_family(cls, ndim=2, **kwargs):
    """A tiny network of the U-Net family in eval mode, with non-trivial batch-norm statistics and heads."""
    torch.manual_seed(0)
    net = cls(1, 3, ndim=ndim, depth=2, base_channels=4, **kwargs)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
        for name, p in net.named_parameters():
            if "head" in name:  # output layers with some spread, so the output is not near uniform
                p.normal_(0.0, 0.5)
    return net.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_tiles_with_the_receptive_field_as_halo_equal_whole_image_prediction(case, tmp_path):
    make, spec, shape, block_shape = CASES[case]
    net = make()
    predictor = Predictor(net, metadata(net, spec), batch_size=3)
    img = image(shape)
    whole = predictor.predict(img)
    assert whole.shape == (3, *shape) and whole.dtype == np.float32
    assert np.allclose(whole.sum(0), 1.0, atol=1e-5) and whole.std() > 0.01  # not a trivial output

    halo = predictor.receptive_field
    labels = zarr.create_array(store=tmp_path / "labels.zarr", shape=shape, chunks=block_shape, dtype="uint8")
    probs = zarr.create_array(
        store=tmp_path / "probs.zarr", shape=(3, *shape), chunks=(3, *block_shape), dtype="float32"
    )
    done = list(predictor.run(img, labels, probs, block_shape=block_shape, halo=halo))
    assert len(done) == len(predictor.plan(shape, block_shape, halo)) > 2
    tiled = probs[...]
    assert np.abs(tiled - whole).max() < 1e-5
    top2 = np.sort(whole, axis=0)[-2:]
    sure = top2[1] - top2[0] > 1e-4  # labels may only differ where two classes tie
    assert (labels[...] == whole.argmax(0) + 1)[sure].all()
    if spec.model_ndim == 2 and len(shape) == 3:
        assert predictor.default_halo(3) == tuple(0 if a == predictor.normal_axis(3) else halo for a in range(3))


def test_unet_tiles_start_on_the_pooling_grid():
    net = unet()
    predictor = Predictor(net, metadata(net))
    assert predictor.align(2) == (4, 4)
    assert all(s.start % 4 == 0 for b in predictor.plan((100, 90), (40, 36), 23) for s in b.inp)
    net3 = msd(in_channels=3)
    assert Predictor(net3, metadata(net3, InputSpec("2.5d", 3))).align(3) == (1, 1, 1)
    for cls in (MUNet, GatedUNet):  # the U-Net family: by their pool_factors
        assert Predictor(net := _unet_family(cls), metadata(net)).align(2) == (4, 4)


def test_default_halo_is_the_measured_one_else_the_receptive_field():
    net = msd(in_channels=3)
    spec = InputSpec("2.5d", 3)
    assert Predictor(net, metadata(net, spec)).default_halo(3) == (0, 12, 12)
    assert Predictor(net, metadata(net, spec, effective_halo=5)).default_halo(3) == (0, 5, 5)
    net3 = msd(ndim=3)
    assert Predictor(net3, metadata(net3, InputSpec("3d"), effective_halo=4)).default_halo(3) == (4, 4, 4)
    net2 = msd()
    assert Predictor(net2, metadata(net2, InputSpec("2d", 1, ("yz",)))).default_halo(3) == (12, 12, 0)


def test_default_block_shapes_are_planes_or_cubes_within_the_memory_budget():
    net = msd()
    small = Predictor(net, metadata(net))
    assert small.default_block_shape((100, 90)) == (100, 90)  # whole planes
    assert small.default_block_shape((5, 3000, 700)) == (1, 1024, 700)
    paper = MSDNet(1, 2, depth=100)
    big = Predictor(paper, metadata(paper, effective_halo=64))
    shape = big.default_block_shape((50, 4000, 4000))
    assert shape[0] == 1 and shape[1] == shape[2] and shape[1] % 64 == 0 and 256 <= shape[1] < 1024
    assert (shape[1] + 128) ** 2 * big.bytes_per_pixel() <= big.memory_budget
    net3 = msd(ndim=3)
    assert Predictor(net3, metadata(net3, InputSpec("3d"))).default_block_shape((300, 300, 300)) == (64, 64, 64)
    paper3 = MSDNet(1, 2, depth=100, ndim=3)
    cube = Predictor(paper3, metadata(paper3, InputSpec("3d"), effective_halo=32)).default_block_shape((300,) * 3)
    assert len(set(cube)) == 1 and 16 <= cube[0] < 64


def _plan_case():
    net = msd(in_channels=3)
    return Predictor(net, metadata(net, InputSpec("2.5d", 3)), batch_size=2), image((6, 70, 60)), (2, 32, 25)


def test_blocks_stream_every_block_once_in_the_requested_order():
    predictor, img, block_shape = _plan_case()
    plan = predictor.plan(img.shape, block_shape)
    done = list(predictor.blocks(img, block_shape))
    assert [d.block for d in done] == plan
    assert all(isinstance(d, BlockDone) and d.seconds >= 0 for d in done)
    assert all(d.labels.dtype == np.uint8 and d.labels.shape == d.block.shape for d in done)
    assert all(d.probabilities.shape == (3, *d.block.shape) for d in done)

    first = (4, slice(40, 41), slice(30, 31))
    ordered = [d.block.index for d in predictor.blocks(img, block_shape, first=first)]
    assert ordered[0] == (2, 1, 1) and sorted(ordered) == sorted(b.index for b in plan)

    skip = {b.index for b in plan[::2]}
    rest = [d.block.index for d in predictor.blocks(img, block_shape, skip=skip, probabilities=False)]
    assert rest == [b.index for b in plan if b.index not in skip]


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_stop_ends_between_blocks(kind):
    predictor, img, block_shape = _plan_case()
    event = threading.Event()
    stop = event if kind == "event" else event.is_set
    out = np.zeros(img.shape, np.uint8)
    seen = []
    for done in predictor.run(img, labels_out=out, block_shape=block_shape, stop=stop):
        seen.append(done.block)
        if len(seen) == 3:
            event.set()
    assert len(seen) == 3
    written = np.zeros(img.shape, bool)
    for b in seen:
        written[b.out] = True
    assert (out[written] > 0).all() and (out[~written] == 0).all()


def test_only_block_regions_are_read():
    predictor, img, block_shape = _plan_case()
    counted = CountingArray(img)
    list(predictor.blocks(counted, block_shape, halo=5))
    boxes = [predictor.read_box(img.shape, b) for b in predictor.plan(img.shape, block_shape, 5)]
    assert sum(counted.reads) == sum(int(np.prod([s.stop - s.start for s in box])) for box in boxes)
    assert max(counted.reads) < img.size // 4


def test_a_huge_lazy_image_is_never_read_whole():
    net = msd()
    predictor = Predictor(net, metadata(net), batch_size=2)
    huge = CountingArray(shape=(3, 4000, 4000))
    stream = predictor.blocks(huge, (1, 200, 200), first=(1, slice(2000, 2200), slice(2000, 2200)))
    got = [next(stream).block for _ in range(3)]
    stream.close()
    assert got[0].out == (slice(1, 2), slice(2000, 2200), slice(2000, 2200))
    largest = 1 * (200 + 2 * 12) ** 2
    assert max(huge.reads) <= largest and sum(huge.reads) <= 10 * largest


def test_zarr_outputs_equal_numpy_outputs(tmp_path):
    net = msd(in_channels=3)
    predictor = Predictor(net, metadata(net, InputSpec("2.5d", 3)))
    img = image((6, 70, 60), seed=1)
    block_shape = (1, 32, 32)
    labels = np.zeros(img.shape, np.uint8)
    probs = np.zeros((3, *img.shape), np.float32)
    list(predictor.run(img, labels, probs, block_shape=block_shape))
    z_labels = zarr.create_array(store=tmp_path / "l.zarr", shape=img.shape, chunks=block_shape, dtype="uint8")
    z_probs = zarr.create_array(store=tmp_path / "p.zarr", shape=probs.shape, chunks=(3, *block_shape), dtype="uint8")
    half = np.zeros(probs.shape, np.float16)
    list(predictor.run(img, z_labels, z_probs, block_shape=block_shape))
    list(predictor.run(img, probabilities_out=half, block_shape=block_shape))
    reopened = zarr.open_array(tmp_path / "l.zarr", mode="r")
    assert (reopened[...] == labels).all() and labels.min() >= 1
    assert (zarr.open_array(tmp_path / "p.zarr", mode="r")[...] == np.rint(probs * 255).astype(np.uint8)).all()
    assert np.array_equal(half, probs.astype(np.float16))


def test_dask_zarr_and_file_backed_inputs_give_the_same_result(tmp_path):
    import dask.array as da

    from napari_msd.io.images import open_image

    net = msd()
    predictor = Predictor(net, metadata(net))
    img = image((3, 50, 40), seed=2)
    expected = np.stack([d.probabilities for d in predictor.blocks(img, (3, 50, 40), halo=0)])
    np.save(tmp_path / "img.npy", img)
    z = zarr.create_array(store=tmp_path / "img.zarr", shape=img.shape, chunks=(1, 16, 16), dtype="uint8")
    z[...] = img
    for source in (da.from_array(img, chunks=(1, 20, 20)), z, open_image(tmp_path / "img.npy")):
        got = np.stack([d.probabilities for d in predictor.blocks(source, (3, 50, 40), halo=0)])
        assert np.array_equal(got, expected)


def test_model_files_load_into_a_predictor(tmp_path):
    net = unet()
    meta = metadata(net)
    path = save_model(tmp_path / "m.msd", net, meta)
    loaded = Predictor.from_file(path, device="cpu", batch_size=2)
    img = image((40, 36), seed=3)
    assert np.allclose(loaded.predict(img), Predictor(net, meta).predict(img), atol=1e-6)


def test_bad_outputs_and_inputs_are_refused():
    net = msd()
    predictor = Predictor(net, metadata(net))
    img = image((20, 20))
    with pytest.raises(ValueError, match="labels_out"):
        next(predictor.run(img, labels_out=np.zeros((20, 21), np.uint8)))
    with pytest.raises(ValueError, match="probabilities_out"):
        next(predictor.run(img, probabilities_out=np.zeros((2, 20, 20), np.float32)))
    with pytest.raises(ValueError, match="does not match"):
        Predictor(net, metadata(net, InputSpec("2.5d", 3)))
    net3 = msd(in_channels=3)
    with pytest.raises(ValueError, match="ZYX"):
        Predictor(net3, metadata(net3, InputSpec("2.5d", 3))).predict(img)
