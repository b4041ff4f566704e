"""MS-D kernel speed: the two buffer layouts, and optionally the kernel of an earlier commit, side by side.

Run from the repository root (a git checkout, with the package installed)::

    python benchmarks/msd_kernel.py                      # padded taps against framed maps
    python benchmarks/msd_kernel.py --against 0fe2227    # and the MS-D of that commit
    python benchmarks/msd_kernel.py --blocks 4 8 16      # layers whose taps are mixed together (MSDNet's block)
    python benchmarks/msd_kernel.py --against 0fe2227 --bfloat16   # and training steps with bfloat16 products

The paper's MS-D (100 layers, width 1) is timed on a 512^2 and a 1024^2 forward and on training steps (forward and
backward) of one 256^2 patch and of the engine's default batch, 16 patches of 64^2. The configurations take turns
within every round, in one process, with the same weights: on a shared machine whose speed drifts from minute to
minute, only such interleaved figures compare. It prints the median and the best of the rounds per configuration;
"layout_for" is what :class:`~napari_msd.models.MSDNet` picks by itself. Forwards run in float32, an earlier commit's
too (kernels are compared here, precisions in ``benchmarks/precision.py``); ``--bfloat16`` adds MSDNet's own layout
with the training steps' products in bfloat16 (:func:`~napari_msd.models.precision.training_products`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# forwards compare kernels in float32, an earlier commit's copy too (its own precision module reads the environment)
os.environ["NAPARI_MSD_PRECISION"] = "float32"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from napari_msd.models import msd_kernel  # noqa: E402
from napari_msd.models.msd import MSDNet  # noqa: E402
from napari_msd.models.precision import inference_precision, training_products  # noqa: E402

CASES = {  # name: (batch, side, training)
    "forward 512^2": (1, 512, False),
    "forward 1024^2": (1, 1024, False),
    "training step 256^2": (1, 256, True),
    "training step 16 x 64^2": (16, 64, True),
}
LAYOUTS = {"padded taps": 0.0, "framed": float("inf"), "layout_for": msd_kernel.FRAMED_MAX_GROWTH}


def earlier_msd(commit: str, into: Path):
    """The ``MSDNet`` class of ``commit``'s ``models`` package, imported under another name from ``into``."""
    package = into / f"models_{commit}"
    package.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit, "src/napari_msd/models"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "--strip-components=3", "-C", str(package)], input=archive, check=True)
    (package / "__init__.py").write_text("")  # the package's own __init__ imports napari_msd siblings
    sys.path.insert(0, str(into))
    return importlib.import_module(f"models_{commit}.msd").MSDNet


def time_once(net: torch.nn.Module, x: torch.Tensor, training: bool, products: torch.dtype = torch.float32) -> float:
    def run():
        if training:
            with training_products(products):
                net(x).square().mean().backward()
        else:
            with torch.no_grad(), inference_precision("float32"):
                net(x)

    run()  # warm: scratch sizes, allocator
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--against", metavar="COMMIT", help="also time the MS-D of this git commit")
    parser.add_argument(
        "--blocks", type=int, nargs="+", metavar="B", help="compare these block sizes (layout_for) instead of layouts"
    )
    parser.add_argument(
        "--bfloat16", action="store_true", help="also MSDNet's layout with bfloat16 products in the training steps"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    net = MSDNet(1, 2, depth=100)
    configs: dict[str, tuple[torch.nn.Module, float | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            earlier = earlier_msd(args.against, Path(tmp))(1, 2, depth=100)
            earlier.load_state_dict(net.state_dict())
            configs[f"commit {args.against}"] = (earlier, None)
        if args.blocks:
            for block in args.blocks:
                blocked = MSDNet(1, 2, depth=100, block=block)
                blocked.load_state_dict(net.state_dict())
                configs[f"block {block}" + (" (default)" if block == net.block else "")] = (
                    blocked,
                    LAYOUTS["layout_for"],
                )
        else:
            configs.update({name: (net, growth) for name, growth in LAYOUTS.items()})
        if args.bfloat16:
            configs["layout_for, bfloat16 products"] = (net, LAYOUTS["layout_for"])
        inputs = {case: torch.randn(b, 1, side, side) for case, (b, side, _) in CASES.items()}
        seconds: dict[tuple[str, str], list[float]] = {(c, k): [] for c in CASES for k in configs}
        for _ in range(args.rounds):
            for case, (_, _, training) in CASES.items():
                for name, (model, growth) in configs.items():
                    if growth is not None:
                        msd_kernel.FRAMED_MAX_GROWTH = growth
                    products = torch.bfloat16 if name.endswith("bfloat16 products") else torch.float32
                    if products != torch.float32 and not training:
                        continue  # forwards without gradients: the same float32 kernel as layout_for
                    seconds[(case, name)].append(time_once(model, inputs[case], training, products))
        msd_kernel.FRAMED_MAX_GROWTH = LAYOUTS["layout_for"]
    print(f"{describe()}; {args.rounds} interleaved rounds; seconds, median (best)\n")
    print("| case | " + " | ".join(configs) + " |")
    print("|---|" + "---|" * len(configs))
    for case, (_, _, training) in CASES.items():
        cells = [
            f"{statistics.median(seconds[(case, k)]):.3f} ({min(seconds[(case, k)]):.3f})"
            if training or not k.endswith("bfloat16 products")
            else "(as layout_for)"
            for k in configs
        ]
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
