"""Prediction benchmarks: tiled vs untiled throughput, and peak memory while predicting a 4 GB volume.

Run from the repository root with the package installed::

    python benchmarks/prediction.py            # full run, about 10 minutes on a 2-core CPU (+ 1 min once
                                               # to generate the 4 GB test volume, cached in --workdir)
    python benchmarks/prediction.py --quick    # tiny sizes, a smoke test of the script itself

It prints a Markdown table and, with ``--json PATH``, writes the raw figures. Every number is
measured in this run; nothing is assumed. Run it on an otherwise idle machine: while another process
keeps a core busy, torch's threads wait for each other and a forward pass can take 10-100x longer
(the Machine row shows the load average at the start; ``--threads`` sets torch's threads).

1. **Tiled / untiled throughput.** The same uint8 ZYX volume (``--shape``, default 4 x 2048 x 2048)
   is predicted by ``Predictor.predict`` (whole planes, one plane per forward pass: the untiled
   reference) and by ``Predictor.run`` writing labels into a zarr array (the streaming path, with the
   default block shape for the memory budget and the default halo), for the paper MS-D
   (``MSDNet(1, 2, depth=100, width=1)``) and the U-Net preset (``UNet(1, 2, depth=4,
   base_channels=32)``). Throughput is output megapixels per second of wall time, the best of
   ``--repeats`` alternating runs. Untrained weights give the right speed but a meaningless effective
   halo, so the halo is stated: the measured effective halo stored in ``--model PATH`` (a trained 2D
   model file, which then replaces the paper MS-D in both parts), else ``--halo`` (default 64 px) for
   MS-D, and ``--unet-halo`` (default: the U-Net's receptive field) for the U-Net. Planes of 2048 px
   are used because the default MS-D block on 1024 x 1024 planes is the whole plane (nothing would be
   tiled). Per pixel, the networks run slower on whole 2048 px planes than on block-sized ones, so the
   model is also timed untiled on the planes cut to the largest block input, and the table splits the
   gap between that and the tiled run into halo recomputation (input pixels computed per output pixel
   of the block plan; also given for a 16384 x 16384 plane) and the rest of the pipeline (reading,
   normalising, prefetching, batching, argmax, zarr writes).
2. **Peak memory on a 4 GB volume.** A uint8 zarr v3 volume (``--volume``, default 16 x 16384 x 16384
   = 4.3 GB, chunks 1 x 1024 x 1024, a synthetic EM-like texture written chunk row by chunk row) is
   generated once under ``--workdir`` and reused. A fresh Python process runs the core of
   ``napari-msd predict`` (``napari_msd.inference.batch.prepare`` + ``run``: default blocks and halo,
   labels only, into a zarr output) and stops after ``--max-blocks`` blocks (the whole volume would
   take hours on a CPU). It samples its resident set size (``VmRSS``) after every block and reports the
   peak (``VmHWM``, its whole life: imports, model, readers, prediction) and whether RSS grew from the
   first to the last block (by more than 10% or 64 MiB: the allocator's own noise is a few 10 MB).
   GB here means 10^9 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_RATIO = 0.85
TARGET_PEAK_BYTES = 1.5e9
GROWTH_TOLERANCE = 0.10  # RSS after the last block may exceed that after the first by this much (or 64 MiB)
VOLUME_GENERATOR = 2  # bump when the texture changes, so cached volumes are regenerated
NORMALIZATION = {"method": "percentile", "low": 20.0, "high": 230.0, "percentiles": [1.0, 99.0]}
BIG_PLANE = (16384, 16384)


# -- process memory ---------------------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} missing from /proc/self/status: this benchmark needs Linux")


# -- models -----------------------------------------------------------------------------------------------------------


def _metadata(net, halo: int):
    from napari_msd.io.model_file import ModelMetadata

    return ModelMetadata(
        arch=net.arch,
        config=net.config(),
        class_names=["background", "membrane"][: net.out_channels],
        receptive_field=int(net.receptive_field),
        normalization=dict(NORMALIZATION),
        effective_halo=int(halo),
    )


def _describe_net(arch: str, config: dict) -> str:
    if arch == "msd":
        return f"MS-D d={config.get('depth')} w={config.get('width', 1)}"
    if arch == "unet":
        return f"U-Net depth {config.get('depth')}, {config.get('base_channels')} base"
    return arch


def _models(args) -> list[dict]:
    """The predictors to time: (the model file or the paper MS-D) and the U-Net preset, each with its halo."""
    import torch

    from napari_msd.inference import Predictor
    from napari_msd.models import MSDNet, UNet

    budget = int(args.memory_budget * 2**20)
    torch.manual_seed(0)
    out = []
    if args.model:
        tiled = Predictor.from_file(args.model, memory_budget=budget)
        meta = tiled.metadata
        if tiled.spec.model_ndim == 3:
            raise SystemExit(f"{args.model} is a 3D model; this benchmark times 2D (and 2.5D) models on planes")
        source = (
            "measured effective halo stored in the model file"
            if meta.effective_halo is not None
            else "receptive field; the file stores no measured halo"
        )
        out.append(
            {
                "name": f"{_describe_net(meta.arch, meta.config)} ({Path(args.model).name})",
                "model": tiled.model,
                "metadata": meta,
                "halo": tiled.halo_radius,
                "halo_source": source,
                "tiled": tiled,
            }
        )
    else:
        net = MSDNet(1, 2, depth=args.depth, width=1)
        out.append(
            {
                "name": f"MS-D d={args.depth} w=1",
                "model": net,
                "metadata": _metadata(net, args.halo),
                "halo": args.halo,
                "halo_source": "stated with --halo, not measured",
            }
        )
    unet = UNet(1, 2, depth=args.unet_depth, base_channels=args.unet_base)
    rf = int(unet.receptive_field)
    halo = rf if args.unet_halo is None else args.unet_halo
    source = "its receptive field" if halo == rf else f"stated with --unet-halo (receptive field {rf})"
    out.append(
        {
            "name": f"U-Net depth {args.unet_depth}, {args.unet_base} base",
            "model": unet,
            "metadata": _metadata(unet, halo),
            "halo": halo,
            "halo_source": source,
        }
    )
    for m in out:
        m.setdefault("tiled", Predictor(m["model"], m["metadata"], memory_budget=budget))  # default batch size 4
        m["untiled"] = Predictor(m["model"], m["metadata"], batch_size=1)  # bounded memory: one plane per pass
    return out


# -- 1. throughput ----------------------------------------------------------------------------------------------------


def synthetic_em(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A uint8 EM-like texture: bright cytoplasm, dark thin membrane-like curves, slow shading and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(shape[-2], dtype=np.float32), np.arange(shape[-1], dtype=np.float32), indexing="ij")
    planes = []
    for k in range(int(np.prod(shape[:-2], dtype=np.int64))):
        a, b, c, d = rng.uniform(0, 2 * np.pi, 4).astype(np.float32)
        field = np.sin(x / np.float32(19 + (3 * k) % 7) + 2 * np.sin(y / np.float32(53) + a) + b) * np.sin(
            y / np.float32(23 + (5 * k) % 9) + 2 * np.sin(x / np.float32(41) + c) + d
        )
        membranes = np.exp(-((field / np.float32(0.12)) ** 2))
        shading = 20 * np.sin(x / np.float32(97) + a) * np.cos(y / np.float32(71) + b)
        noise = rng.normal(0, 12, field.shape).astype(np.float32)
        planes.append(np.clip(175 + shading - 120 * membranes + noise, 0, 255).astype(np.uint8))
    return np.stack(planes).reshape(shape)


def plan_cost(predictor, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, float]:
    """Default block shape, number of blocks, and input pixels read and computed per output pixel."""
    plan = predictor.plan(shape)
    inp = sum(int(np.prod(b.inp_shape, dtype=np.int64)) for b in plan)
    return predictor.default_block_shape(shape), len(plan), inp / int(np.prod(shape, dtype=np.int64))


def time_untiled(predictor, image: np.ndarray) -> float:
    start = time.perf_counter()
    predictor.predict(image)
    return time.perf_counter() - start


def time_tiled(predictor, image: np.ndarray, store: Path) -> float:
    import zarr

    labels = zarr.create_array(
        store=str(store),
        shape=image.shape,
        dtype="uint8",
        chunks=predictor.default_block_shape(image.shape),
        fill_value=0,
        overwrite=True,
    )
    start = time.perf_counter()
    # labels only, as `napari-msd predict` does by default; run() alone would also compute probabilities
    for _ in predictor.run(image, labels_out=labels, probabilities=False):
        pass
    return time.perf_counter() - start


def throughput(args, workdir: Path) -> list[dict]:
    image = synthetic_em(tuple(args.shape))
    n_px = image.size
    warm = np.ascontiguousarray(image[:1, :256, :256])
    store = workdir / "throughput-labels.zarr"
    rows = []
    for m in _models(args):
        untiled, tiled = m["untiled"], m["tiled"]
        # the model alone at the size it runs at when tiled: whole planes cut to the largest block input
        normal = tiled.normal_axis(image.ndim)
        plan = tiled.plan(image.shape)
        crop = np.ascontiguousarray(
            image[
                tuple(
                    slice(None) if axis == normal else slice(0, max(b.inp_shape[axis] for b in plan))
                    for axis in range(image.ndim)
                )
            ]
        )
        untiled.predict(warm)  # first-call allocations
        best_u = best_c = best_t = float("inf")
        for _ in range(args.repeats):  # alternate, so a busy spell does not hit one side only
            best_u = min(best_u, time_untiled(untiled, image))
            best_c = min(best_c, time_untiled(untiled, crop))
            best_t = min(best_t, time_tiled(tiled, image, store))
        block, n_blocks, cost = plan_cost(tiled, image.shape)
        big_shape = (1, *BIG_PLANE)
        big_block, _, big_cost = plan_cost(tiled, big_shape)
        rows.append(
            {
                "name": m["name"],
                "halo": m["halo"],
                "halo_source": m["halo_source"],
                "shape": list(image.shape),
                "untiled_mpx_s": n_px / best_u / 1e6,
                "tiled_mpx_s": n_px / best_t / 1e6,
                "ratio": best_u / best_t,
                "crop_shape": list(crop.shape),
                "untiled_crop_mpx_s": crop.size / best_c / 1e6,
                "pipeline_efficiency": (n_px / best_t) * cost / (crop.size / best_c),
                "block_shape": list(block),
                "n_blocks": n_blocks,
                "input_px_per_output_px": cost,
                "big_plane": list(BIG_PLANE),
                "big_block_shape": list(big_block),
                "big_input_px_per_output_px": big_cost,
                "memory_budget_mib": tiled.memory_budget / 2**20,
                "bytes_per_px_estimate": tiled.bytes_per_pixel(),
            }
        )
    shutil.rmtree(store, ignore_errors=True)
    return rows


# -- 2. peak memory on a large volume ---------------------------------------------------------------------------------


def _complete(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> bool:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    record = meta.get("attributes", {}).get("napari_msd_benchmark", {})
    return (
        record.get("complete") is True
        and record.get("generator") == VOLUME_GENERATOR
        and meta.get("shape") == list(shape)
        and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") == list(chunks)
    )


def make_volume(path: Path, shape: tuple[int, ...], chunk: int = 1024) -> tuple[float, bool]:
    """A uint8 ZYX zarr v3 volume at ``path`` (reused when complete), written one row of chunks at a time from
    a bank of 8 precomputed textured chunks, each rolled by its position; returns (seconds, reused)."""
    import zarr

    chunks = (1, min(chunk, shape[1]), min(chunk, shape[2]))
    if _complete(path, shape, chunks):
        return 0.0, True
    start = time.perf_counter()
    arr = zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        fill_value=0,
        dimension_names=("z", "y", "x"),
        overwrite=True,
    )
    ch, cw = chunks[1:]
    bank = synthetic_em((8, ch, cw), seed=1)
    for z in range(shape[0]):
        for i, y0 in enumerate(range(0, shape[1], ch)):
            h = min(ch, shape[1] - y0)
            row = np.empty((1, h, shape[2]), np.uint8)
            for j, x0 in enumerate(range(0, shape[2], cw)):
                w = min(cw, shape[2] - x0)
                tile = np.roll(
                    bank[(z + 3 * i + 5 * j) % len(bank)], ((97 * z + 31 * j) % ch, (61 * i + 7 * z) % cw), axis=(0, 1)
                )
                row[0, :, x0 : x0 + w] = tile[:h, :w]
            arr[z : z + 1, y0 : y0 + h, :] = row
    arr.attrs["napari_msd_benchmark"] = {"complete": True, "generator": VOLUME_GENERATOR}  # written last
    return time.perf_counter() - start, False


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def memory_model_file(args, workdir: Path) -> Path:
    """The model the memory run predicts with: ``--model``, else the MS-D with ``--halo`` saved to ``workdir``."""
    if args.model:
        return Path(args.model)
    import torch

    from napari_msd.io.model_file import save_model
    from napari_msd.models import MSDNet

    torch.manual_seed(0)
    net = MSDNet(1, 2, depth=args.depth, width=1)
    path = workdir / f"msd-d{args.depth}-halo{args.halo}.msd"
    save_model(path, net, _metadata(net, args.halo), overwrite=True)
    return path


def memory_child(config: dict) -> dict:
    """Run in a fresh process: the batch core of ``napari-msd predict`` for ``max_blocks`` blocks, RSS per block."""
    from napari_msd.inference.batch import BatchFinished, BatchStarted, BlockWritten, prepare, run

    job = prepare(config["model"], config["volume"], config["output"], overwrite=True, device="cpu")
    after_prepare = _status_bytes("VmRSS")
    limit, written, rss, started, finished = config["max_blocks"], 0, [], None, None
    for event in run(job, stop=lambda: written >= limit):  # noqa: B023 -- read at each block, as intended
        if isinstance(event, BatchStarted):
            started = event
        elif isinstance(event, BlockWritten):
            written += 1
            rss.append(_status_bytes("VmRSS"))
        elif isinstance(event, BatchFinished):
            finished = event
    block_px = [int(np.prod([s.stop - s.start for s in job.spec.block_slices(i)])) for i in sorted(job.output.done())]
    return {
        "n_blocks": started.n_blocks,
        "blocks_done": written,
        "block_shape": list(started.block_shape),
        "halo": list(started.halo),
        "seconds": finished.elapsed,
        "output_px": sum(block_px),
        "rss_after_prepare": after_prepare,
        "rss_per_block": rss,
        "peak_rss": _status_bytes("VmHWM"),
        "arch": job.predictor.metadata.arch,
        "config": job.predictor.metadata.config,
    }


def memory(args, workdir: Path) -> dict:
    shape = tuple(args.volume)
    volume = workdir / f"volume-{'x'.join(map(str, shape))}.zarr"
    gen_seconds, reused = make_volume(volume, shape)
    model = memory_model_file(args, workdir)
    output = workdir / "prediction-out.zarr"
    shutil.rmtree(output, ignore_errors=True)  # the same job would resume, skipping the blocks done last time
    config = {"model": str(model), "volume": str(volume), "output": str(output), "max_blocks": args.max_blocks}
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *threads, "--memory-child", json.dumps(config)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"the prediction process failed (exit {proc.returncode}):\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r.update(
        volume=str(volume),
        volume_shape=list(shape),
        volume_bytes=int(np.prod(shape, dtype=np.int64)),
        volume_disk_bytes=_disk_bytes(volume),
        volume_generated_s=gen_seconds,
        volume_reused=reused,
        model_file=str(model),
    )
    rss = r["rss_per_block"]
    r["rss_growth"] = rss[-1] - rss[0] if rss else 0
    r["rss_grew"] = bool(rss) and r["rss_growth"] > max(GROWTH_TOLERANCE * rss[0], 64 * 2**20)
    return r


# -- report -----------------------------------------------------------------------------------------------------------


def table(r: dict) -> str:
    gb = 1e9
    rows = [("Machine", r["machine"], f"load average {r['load_average_1min']:.1f} at the start (want ~0)", "")]
    for t in r["throughput"]:
        shape = " x ".join(map(str, t["shape"]))
        rows += [
            (
                f"{t['name']} untiled: `Predictor.predict`",
                f"{t['untiled_mpx_s']:.2f} Mpx/s",
                f"{shape} uint8, whole planes, one per forward pass",
                "",
            ),
            (
                f"{t['name']} untiled on block-sized planes",
                f"{t['untiled_crop_mpx_s']:.2f} Mpx/s",
                f"the same planes cut to {' x '.join(map(str, t['crop_shape']))}, the largest block input",
                "",
            ),
            (
                f"{t['name']} tiled: `Predictor.run` into zarr labels",
                f"{t['tiled_mpx_s']:.2f} Mpx/s",
                f"default blocks {' x '.join(map(str, t['block_shape']))} ({t['n_blocks']} blocks, "
                f"{t['memory_budget_mib']:.0f} MiB budget), halo {t['halo']} px ({t['halo_source']})",
                "",
            ),
            (
                f"{t['name']} tiled / untiled",
                f"{t['ratio']:.0%}",
                f"{t['tiled_mpx_s'] / t['untiled_crop_mpx_s']:.0%} of block-sized planes, where halo recomputation "
                f"({t['input_px_per_output_px']:.2f} input px per output px) caps it at "
                f"{1 / t['input_px_per_output_px']:.0%} (on {t['big_plane'][0]}^2 planes, blocks "
                f"{' x '.join(map(str, t['big_block_shape'][1:]))}: {1 / t['big_input_px_per_output_px']:.0%}); "
                f"the rest of the pipeline runs at {t['pipeline_efficiency']:.0%}",
                f">= {TARGET_RATIO:.0%}: {'met' if t['ratio'] >= TARGET_RATIO else 'not met'}",
            ),
        ]
    m = r["memory"]
    rss = m["rss_per_block"]
    volume = " x ".join(map(str, m["volume_shape"]))
    made = "reused from" if m["volume_reused"] else f"generated in {m['volume_generated_s']:.0f} s in"
    rows += [
        (
            "Input volume (zarr v3, chunks 1 x 1024 x 1024)",
            f"{volume} uint8 = {m['volume_bytes'] / gb:.2f} GB",
            f"{m['volume_disk_bytes'] / gb:.2f} GB on disk, {made} {Path(m['volume']).parent}",
            "",
        ),
        (
            "`napari-msd predict` core (batch.prepare + run), fresh process",
            f"{m['blocks_done']} of {m['n_blocks']} blocks",
            f"{_describe_net(m['arch'], m['config'])}, blocks {' x '.join(map(str, m['block_shape']))}, halo "
            f"{' x '.join(map(str, m['halo']))}, labels only: {m['output_px'] / 1e6:.1f} Mpx in {m['seconds']:.0f} s "
            f"= {m['output_px'] / max(m['seconds'], 1e-9) / 1e6:.2f} Mpx/s",
            "",
        ),
        (
            "Peak RSS (VmHWM, whole process)",
            f"{m['peak_rss'] / gb:.2f} GB",
            f"RSS {m['rss_after_prepare'] / gb:.2f} GB after prepare (torch, model, output created)",
            f"< {TARGET_PEAK_BYTES / gb:.1f} GB: {'met' if m['peak_rss'] < TARGET_PEAK_BYTES else 'not met'}",
        ),
        (
            f"RSS after block 1 / block {len(rss)}",
            f"{rss[0] / gb:.2f} / {rss[-1] / gb:.2f} GB" if rss else "no block done",
            f"{m['rss_growth'] / 1e6:+.0f} MB; highest sample {max(rss, default=0) / gb:.2f} GB",
            f"{'grew' if m['rss_grew'] else 'flat'} (tolerance: {GROWTH_TOLERANCE:.0%} or 64 MiB, allocator noise)",
        ),
    ]
    lines = ["| benchmark | measured | setup | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    return "\n".join(lines)


def _triple(text: str) -> list[int]:
    values = [int(v) for v in text.replace("x", ",").split(",")]
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give three positive sizes Z,Y,X, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the machine")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this JSON file")
    parser.add_argument(
        "--model",
        help="a trained 2D/2.5D model file: its stored effective halo is used, and it "
        "replaces the paper MS-D in both parts",
    )
    parser.add_argument("--halo", type=int, help="MS-D halo in px without --model (default 64; --quick 16)")
    parser.add_argument("--depth", type=int, help="MS-D depth without --model (default 100; --quick 30)")
    parser.add_argument("--unet-halo", type=int, help="U-Net halo in px (default its receptive field; --quick 16)")
    parser.add_argument(
        "--shape", type=_triple, help="throughput volume Z,Y,X (default 4,2048,2048; --quick 2,256,256)"
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        help="activation budget of the tiled predictors in MiB (default the predictor's, 600; --quick 8)",
    )
    parser.add_argument("--repeats", type=int, help="timed runs per side, best kept (default 2; --quick 1)")
    parser.add_argument(
        "--volume",
        type=_triple,
        help="memory test volume Z,Y,X (default 16,16384,16384 = 4.3 GB; --quick 4,4096,4096 = 67 MB)",
    )
    parser.add_argument("--max-blocks", type=int, help="blocks predicted in the memory test (default 48; --quick 6)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "napari-msd-benchmark",
        help="where the test volume is cached and outputs are written (default %(default)s)",
    )
    parser.add_argument("--threads", type=int, help="torch threads in both parts (default: torch's default)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return
    load = os.getloadavg()[0]  # before this script adds its own

    from napari_msd.inference import DEFAULT_MEMORY_BUDGET

    quick = args.quick
    defaults = {
        "halo": 16 if quick else 64,
        "depth": 30 if quick else 100,
        "unet_halo": 16 if quick else None,
        "shape": [2, 256, 256] if quick else [4, 2048, 2048],
        "memory_budget": 8 if quick else DEFAULT_MEMORY_BUDGET / 2**20,
        "repeats": 1 if quick else 2,
        "volume": [4, 4096, 4096] if quick else [16, 16384, 16384],
        "max_blocks": 6 if quick else 48,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.unet_depth, args.unet_base = 4, 32
    if args.max_blocks < 1 or args.repeats < 1:
        parser.error("--max-blocks and --repeats must be >= 1")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"machine": describe(), "load_average_1min": load, "quick": quick}
    results["throughput"] = throughput(args, args.workdir)
    results["memory"] = memory(args, args.workdir)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
