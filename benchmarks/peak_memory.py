"""Peak memory of one MS-D training step, measured in a fresh process (run by ``run.py``).

``python benchmarks/peak_memory.py fast|naive SIZE DEPTH`` prints JSON with the rise of
the process's resident high-water mark (``VmHWM``) caused by one forward + backward +
Adam step, after everything else (torch, the model, the input, a tiny warm-up step) is
already resident; the mark is reset just before the step (Linux ``clear_refs``). Dividing
by 4 bytes x pixels gives fp32 maps per pixel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from napari_msd.models.msd import MSDNet
from napari_msd.models.msd_reference import reference_forward


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} missing from /proc/self/status: this benchmark needs Linux")


def measure(impl: str, size: int, depth: int) -> dict:
    torch.manual_seed(0)
    net = MSDNet(1, 2, depth=depth)
    forward = net if impl == "fast" else (lambda x: reference_forward(net, x))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        optimizer.zero_grad(set_to_none=False)
        loss_fn(forward(x), y).backward()
        optimizer.step()

    step(torch.randn(1, 1, 8, 8), torch.randint(0, 2, (1, 8, 8)))  # allocates Adam state and grads
    x, y = torch.randn(1, 1, size, size), torch.randint(0, 2, (1, size, size))
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before = _status_bytes("VmRSS")
    step(x, y)
    rise = _status_bytes("VmHWM") - before
    return {"impl": impl, "size": size, "depth": depth, "peak_bytes": rise, "maps_per_pixel": rise / (4 * size * size)}


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else torch.get_num_threads())
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
