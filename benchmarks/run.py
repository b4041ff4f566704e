"""Model benchmarks: MS-D training step (float32 and bfloat16 products) and memory, MS-D (float32 and bfloat16) and
U-Net forward throughput.

Run from the repository root with the package installed::

    python benchmarks/run.py            # full run, a few minutes on a 2-core CPU
    python benchmarks/run.py --quick    # smaller sizes, a smoke test of the script itself

It prints a Markdown table (the one in README.md) and, with ``--json PATH``, writes the raw
figures. Every number is measured in this run; nothing is assumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import best_time, describe, matmul_peak_gflops, memory_bandwidth_gbs  # noqa: E402

from napari_msd.models import MSDNet, UNet  # noqa: E402
from napari_msd.models.msd_reference import reference_forward  # noqa: E402
from napari_msd.models.precision import (  # noqa: E402
    bfloat16_speedup,
    inference_dtype,
    inference_precision,
    training_products,
)


def msd_bytes_per_pixel(depth: int, width: int = 1, c_in: int = 1, c_out: int = 2) -> int:
    """fp32 traffic per pixel of a per-layer MS-D forward: each layer reads every earlier map, writes its own."""
    reads = sum(c_in + i * width for i in range(depth)) + (c_in + width * depth)  # layers, then the head
    writes = width * depth + c_out
    return 4 * (reads + writes)


def msd_flops_per_pixel(depth: int, width: int = 1, c_in: int = 1, c_out: int = 2, ndim: int = 2) -> int:
    taps = 3**ndim
    return 2 * taps * sum(width * (c_in + i * width) for i in range(depth)) + 2 * c_out * (c_in + width * depth)


def conv_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-add FLOPs of every convolution in one forward pass, counted with hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        kernel = module.weight[0].numel()  # in_channels / groups x kernel volume (for ConvTranspose: out x kernel)
        if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
            total += 2 * inputs[0].numel() * module.weight.shape[1] * module.weight[0, 0].numel()
        else:
            total += 2 * output.numel() * kernel

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def train_step_seconds(forward, params, size: int, steps: int) -> float:
    """Median wall time of a forward + backward + Adam step on a ``size`` x ``size`` image, batch 1."""
    optimizer = torch.optim.Adam(params, lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(1, 1, size, size), torch.randint(0, 2, (1, size, size))
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(forward(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def peak_memory(impl: str, size: int, depth: int) -> dict:
    script = Path(__file__).with_name("peak_memory.py")
    out = subprocess.run(
        [sys.executable, str(script), impl, str(size), str(depth)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def forward_mpx_s(model, size: int, repeats: int) -> float:
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        seconds = best_time(lambda: model(x), repeats=repeats)
    return size * size / seconds / 1e6


def run(quick: bool) -> dict:
    depth = 30 if quick else 100
    train_size, fwd_size = (96, 128) if quick else (256, 512)
    steps = 2 if quick else 3
    torch.manual_seed(0)
    r: dict = {"machine": describe(), "depth": depth, "train_size": train_size, "fwd_size": fwd_size}
    r["bandwidth_gbs"] = memory_bandwidth_gbs()
    r["matmul_gflops"] = matmul_peak_gflops()

    net = MSDNet(1, 2, depth=depth)
    r["train_fast_s"] = train_step_seconds(net, net.parameters(), train_size, steps)
    with training_products(torch.bfloat16):
        r["train_bf16_s"] = train_step_seconds(net, net.parameters(), train_size, steps)
    r["train_naive_s"] = train_step_seconds(
        lambda x: reference_forward(net, x), net.parameters(), train_size, max(1, steps - 1)
    )
    r["mem_fast"] = peak_memory("fast", train_size, depth)
    r["mem_naive"] = peak_memory("naive", train_size, depth)

    with inference_precision("float32"):
        r["fwd_fast_mpx_s"] = forward_mpx_s(net, fwd_size, repeats=3)
    with inference_precision("bfloat16"):
        r["fwd_bf16_mpx_s"] = forward_mpx_s(net, fwd_size, repeats=3)
    r["matmul_bf16_gflops"] = matmul_peak_gflops(dtype=torch.bfloat16)
    r["bf16_probe"] = bfloat16_speedup()
    r["auto_precision"] = str(inference_dtype(torch.device("cpu"))).removeprefix("torch.")
    r["fwd_naive_mpx_s"] = forward_mpx_s(lambda x: reference_forward(net, x), fwd_size, repeats=1)
    r["msd_bytes_per_px"] = msd_bytes_per_pixel(depth)
    r["msd_flops_per_px"] = msd_flops_per_pixel(depth)

    unet = UNet(1, 2, depth=4, base_channels=32).eval()
    x = torch.randn(1, 1, fwd_size, fwd_size)
    r["unet_params"] = sum(p.numel() for p in unet.parameters())
    r["unet_flops_per_px"] = conv_flops(unet, x) / fwd_size**2
    r["unet_fwd_mpx_s"] = forward_mpx_s(unet, fwd_size, repeats=3)
    return r


def table(r: dict) -> str:
    d, ts, fs = r["depth"], r["train_size"], r["fwd_size"]
    mf, mn = r["mem_fast"], r["mem_naive"]
    bw_roof = r["bandwidth_gbs"] * 1e9 / r["msd_bytes_per_px"] / 1e6
    compute_roof = r["matmul_gflops"] * 1e9 / r["msd_flops_per_px"] / 1e6
    compute_bf16 = r["matmul_bf16_gflops"] * 1e9 / r["msd_flops_per_px"] / 1e6
    unet_gflops = r["unet_fwd_mpx_s"] * r["unet_flops_per_px"] / 1e3
    rows = [
        ("Machine", r["machine"], "", ""),
        ("Memory bandwidth (a+b, 256 MB)", f"{r['bandwidth_gbs']:.1f} GB/s", "", ""),
        ("fp32 matmul peak (2048^3)", f"{r['matmul_gflops']:.0f} GFLOP/s", "", ""),
        ("bf16 matmul peak (2048^3)", f"{r['matmul_bf16_gflops']:.0f} GFLOP/s", "", ""),
        (
            f"MS-D d={d} w=1 training step, {ts}x{ts}, batch 1",
            f"{r['train_fast_s']:.2f} s",
            f"{r['train_naive_s']:.2f} s",
            f"{r['train_naive_s'] / r['train_fast_s']:.1f}x faster",
        ),
        (
            f"MS-D d={d} w=1 training step, {ts}x{ts}, batch 1, bfloat16 products",
            f"{r['train_bf16_s']:.2f} s",
            "",
            f"{r['train_fast_s'] / r['train_bf16_s']:.1f}x float32",
        ),
        (
            f"MS-D d={d} peak training memory, {ts}x{ts}",
            f"{mf['peak_bytes'] / 2**20:.0f} MiB ({mf['maps_per_pixel']:.0f} maps/px)",
            f"{mn['peak_bytes'] / 2**20:.0f} MiB ({mn['maps_per_pixel']:.0f} maps/px)",
            f"{mn['peak_bytes'] / max(mf['peak_bytes'], 1):.1f}x less",
        ),
        (
            f"MS-D d={d} forward, {fs}x{fs}, float32",
            f"{r['fwd_fast_mpx_s']:.2f} Mpx/s",
            f"{r['fwd_naive_mpx_s']:.2f} Mpx/s",
            f"{r['fwd_fast_mpx_s'] / r['fwd_naive_mpx_s']:.1f}x faster",
        ),
        (
            "  per-layer bandwidth roofline",
            f"{bw_roof:.2f} Mpx/s ({r['msd_bytes_per_px'] / 1e3:.1f} kB/px)",
            "",
            f"ours at {r['fwd_fast_mpx_s'] / bw_roof:.0%}",
        ),
        (
            "  compute roofline (matmul peak)",
            f"{compute_roof:.2f} Mpx/s ({r['msd_flops_per_px'] / 1e3:.0f} kFLOP/px)",
            "",
            f"ours at {r['fwd_fast_mpx_s'] / compute_roof:.0%}",
        ),
        (
            f"MS-D d={d} forward, {fs}x{fs}, bfloat16 (the probe: {r['bf16_probe']:.1f}x; auto: {r['auto_precision']})",
            f"{r['fwd_bf16_mpx_s']:.2f} Mpx/s",
            "",
            f"{r['fwd_bf16_mpx_s'] / r['fwd_fast_mpx_s']:.1f}x float32",
        ),
        (
            "  per-layer bandwidth roofline, 2-byte maps",
            f"{2 * bw_roof:.2f} Mpx/s ({r['msd_bytes_per_px'] / 2e3:.1f} kB/px)",
            "",
            f"ours at {r['fwd_bf16_mpx_s'] / (2 * bw_roof):.0%}",
        ),
        (
            "  compute roofline (bf16 matmul peak)",
            f"{compute_bf16:.2f} Mpx/s",
            "",
            f"ours at {r['fwd_bf16_mpx_s'] / compute_bf16:.0%}",
        ),
        (
            f"U-Net depth 4, 32 base ({r['unet_params'] / 1e6:.2f} M params) forward, {fs}x{fs}",
            f"{r['unet_fwd_mpx_s']:.2f} Mpx/s",
            "",
            f"{unet_gflops:.0f} GFLOP/s = {unet_gflops / r['matmul_gflops']:.0%} of matmul peak",
        ),
    ]
    lines = ["| benchmark | napari-msd | naive reference | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the machine")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this JSON file")
    args = parser.parse_args()
    results = run(args.quick)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
