"""GeM pooling: fusedembed.ops.gem_pool vs the usual eager formula and that formula compiled.

Forward moves |x| bytes, forward+backward 3|x| (read x twice, write dx once); GB/s is that
count over the time. Usage: python benchmarks/bench_gem_pool.py [--quick] [--json rows.json]
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, parser, run_cases  # noqa: E402

from fusedembed.ops import gem_pool  # noqa: E402


def eager_gem(x, p, eps=1e-6):
    # The formula users write today (avg_pool2d of the clamped power, then the root).
    return F.avg_pool2d(x.clamp(min=eps).pow(p), (x.size(-2), x.size(-1))).pow(1.0 / p).flatten(1)


def make_cases(args):
    shapes = [(16, 256, 7, 7), (8, 256, 16, 16)] if args.quick else [(256, 2048, 7, 7), (64, 2048, 32, 32)]
    dtypes = [torch.float32, torch.bfloat16]
    # Every case recompiles the baseline (new shapes, grad mode): lift dynamo's limit so it never
    # silently falls back to eager.
    torch._dynamo.config.recompile_limit = 1024
    compiled = torch.compile(eager_gem)
    cases = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in ["nchw", "nhwc"]:
                x = torch.rand(shape, device=args.device).to(dtype) + 0.1
                if layout == "nhwc":
                    x = x.to(memory_format=torch.channels_last)
                xg = x.detach().requires_grad_()
                p = torch.tensor(3.0, device=args.device, requires_grad=True)
                nbytes = x.numel() * x.element_size()
                tag = f"{tuple(shape)} {str(dtype)[6:]} {layout}"
                params = dict(shape=list(shape), dtype=str(dtype)[6:], layout=layout)

                def fwd(f, x=x, p=p):
                    with torch.no_grad():
                        return f(x, p)

                def fwd_bwd(f, xg=xg, p=p):
                    out = f(xg, p)
                    out.backward(torch.ones_like(out))
                    xg.grad = None
                    p.grad = None

                # Bind this case's closures now (a bare `fwd` would late-bind to the last case).
                cases.append(Case(f"fwd {tag}", {
                    "eager": lambda f=fwd: f(eager_gem), "torch.compile": lambda f=fwd: f(compiled),
                    "fusedembed": lambda f=fwd: f(gem_pool)}, nbytes, dict(params, pass_="fwd")))
                cases.append(Case(f"fwd+bwd {tag}", {
                    "eager": lambda f=fwd_bwd: f(eager_gem), "torch.compile": lambda f=fwd_bwd: f(compiled),
                    "fusedembed": lambda f=fwd_bwd: f(gem_pool)}, 3 * nbytes, dict(params, pass_="fwd+bwd")))
    return cases


def main():
    args = parser(__doc__).parse_args()
    run_cases(make_cases(args), args)


if __name__ == "__main__":
    main()
