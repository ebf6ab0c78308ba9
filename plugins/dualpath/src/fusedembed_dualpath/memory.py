"""Peak memory of the instance loss, plain ``F.cross_entropy`` vs the chunked one, on CPU.

    python -m fusedembed_dualpath.memory                     # B=128, 113,287 classes, 2048-d
    python -m fusedembed_dualpath.memory --classes 20000     # a smaller check

Each case runs in a fresh process: it allocates W (C × D) and the features of both branches,
notes its resident set, runs forward + backward, and reports the rise of the peak resident
set (``VmHWM``) over that baseline. glibc's mmap threshold is pinned low
(``MALLOC_MMAP_THRESHOLD_``), so every large tensor is mmap'ed and unmapped when freed and the
peak resident set follows the live tensors, not what the heap kept after they died.
"""

import argparse
import json
import os
import subprocess
import sys

from fusedembed.errors import run_command

CASE = r"""
import json, sys, torch
import torch.nn.functional as F
from fusedembed_dualpath.losses import chunked_cross_entropy

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield int(line.split()[1]) * 1024

b, c, d, chunk = (int(v) for v in sys.argv[1:5])
torch.manual_seed(0)
w = (torch.randn(c, d) * 0.01).requires_grad_()
x = torch.randn(2 * b, d).requires_grad_()        # both branches' features
y = torch.randint(c, (2 * b,))
torch.set_num_threads(1)
# Warm up (the matmul library's one-off buffers), then reset the high-water mark so that the
# baseline is the live set now.
small = torch.randn(8, d, requires_grad=True)
chunked_cross_entropy(small, w[:16], y[:8] % 16, chunk=4).sum().backward()
F.cross_entropy(small @ w[:16].T, y[:8] % 16).backward()
del small
open("/proc/self/clear_refs", "w").write("5")
base = list(hwm())[1]
loss = (F.cross_entropy(x @ w.T, y, reduction="sum") if chunk == 0
        else chunked_cross_entropy(x, w, y, chunk=chunk).sum())
loss.backward()
peak = list(hwm())[0]
print(json.dumps({"peak_bytes": peak - base, "loss": float(loss)}))
"""


def measure(batch: int, classes: int, dim: int, chunk: int) -> dict:
    """``{"peak_bytes", "loss"}`` of one forward + backward (chunk 0: plain cross_entropy)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", CASE, str(batch), str(classes), str(dim), str(chunk)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def analytic(batch: int, classes: int, dim: int, chunk: int) -> int:
    """Bytes (float32) the loss needs beyond W and x at its peak, in backward: grad W and
    grad x, plus the logits' share — one N × C gradient of the logits for plain CE (its forward
    holds two N × C copies, logits and log-softmax, but no grad W yet), about three
    N × chunk blocks chunked."""
    n = 2 * batch
    blocks = n * classes if chunk == 0 else 3 * n * min(chunk, classes)
    return 4 * (classes * dim + n * dim + blocks)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classes", type=int, default=113287)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 8192, 2048])
    args = p.parse_args(argv)
    print(f"instance loss, B={args.batch} per branch (N={2 * args.batch} rows), C={args.classes}, "
          f"D={args.dim}, float32, CPU; W itself is {4 * args.classes * args.dim / 2**20:.0f} MiB")
    grad_w = 4 * args.classes * args.dim / 2**20
    print("| cross-entropy | measured peak (MiB) | of which beyond grad W | analytic (MiB) |\n|---|---:|---:|---:|")
    for chunk in args.chunks:
        m = measure(args.batch, args.classes, args.dim, chunk)
        name = "plain F.cross_entropy" if chunk == 0 else f"chunked, {chunk} classes"
        peak = m["peak_bytes"] / 2**20
        print(f"| {name} | {peak:.0f} | {peak - grad_w:.0f} | "
              f"{analytic(args.batch, args.classes, args.dim, chunk) / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_dualpath.memory")
