"""Shared benchmark plumbing: timing, a readable table, and ``--json`` rows.

Every bench_<op>.py builds a list of cases, each with several named implementations run side
by side in one process, and calls ``run_cases``. Times are medians over repeats; on CUDA they
come from CUDA events around a batch of calls, on CPU from ``time.perf_counter``.
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class Case:
    """One problem: ``impls`` maps an implementation name to a zero-argument callable."""

    name: str
    impls: Dict[str, Callable[[], object]]
    bytes_moved: Optional[int] = None  # for the effective-bandwidth column
    params: Dict[str, object] = field(default_factory=dict)


def parser(description: str, cases: bool = True) -> argparse.ArgumentParser:
    """The common flags; ``cases``: those of ``run_cases`` too (repeats, filters, profile)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON ('-' for stdout)")
    ap.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    if not cases:
        return ap
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per implementation")
    ap.add_argument("--only", default=None, help="run only implementations whose name contains this")
    ap.add_argument("--case", action="append", default=[],
                    help="run only cases whose name contains this (repeatable: any of them)")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, each implementation's calls under torch.profiler: the kernels "
                         "it launches (CUDA) and the host ops it runs, per call")
    return ap


def time_fn(fn: Callable[[], object], device: str, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call of ``fn``."""
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        # Batch calls between events so launch overhead of the timing itself does not dominate.
        inner = 10
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_cases(cases: List[Case], args, reference: str = "fusedembed") -> List[dict]:
    """Times every implementation of every case; prints a table; returns (and maybe writes) rows.

    ``speedup`` of a row is that implementation's time divided by ``reference``'s time in the
    same case, i.e. how many times faster fusedembed is than it."""
    if args.case:
        chosen = [c for c in cases if any(part in c.name for part in args.case)]
        if not chosen:
            sys.exit(f"--case: no case name contains {' or '.join(map(repr, args.case))}; the cases: "
                     + ", ".join(c.name for c in cases))
        cases = chosen
    rows = []
    for case in cases:
        timings = {}
        for impl, fn in case.impls.items():
            if args.only and args.only not in impl and impl != reference:
                continue
            try:
                timings[impl] = time_fn(fn, args.device, args.repeats)
            except Exception as err:  # a baseline that cannot run this case is reported, not fatal
                print(f"  {case.name} / {impl}: skipped ({type(err).__name__}: {str(err)[:120]})", file=sys.stderr)
        if args.profile:
            for impl in timings:
                profile_impl(f"{case.name} / {impl}", case.impls[impl], args.device)
        ref = timings.get(reference)
        for impl, sec in timings.items():
            row = {"case": case.name, "impl": impl, "device": args.device, "us": sec * 1e6, **case.params}
            if case.bytes_moved:
                row["GBps"] = case.bytes_moved / sec / 1e9
            if ref is not None:
                row["fusedembed_speedup"] = sec / ref
            rows.append(row)
    print_table(rows)
    if args.json:
        text = json.dumps(rows, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return rows


def profile_impl(title: str, fn: Callable[[], object], device: str, calls: int = 10, top: int = 8) -> None:
    """Prints what ``calls`` calls of ``fn`` spend their time on, per call: the device's kernels,
    copies and fills (CUDA), then the host's ops by their own time (argument checks, allocations,
    launches, syncs), which bound a call whose kernels are shorter than its launches. ``fn`` is
    warm: run_cases has just timed it."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA), key=lambda e: -e.self_device_time_total)
    host = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: -e.self_cpu_time_total)
    device_us = sum(e.self_device_time_total for e in kernels) / calls
    host_us = sum(e.self_cpu_time_total for e in host) / calls
    on_device = f"device {device_us:.1f} us/call, " if cuda else ""
    print(f"profile  {title}  ({calls} calls): {on_device}host {host_us:.1f} us/call")
    for label, evs, attr in (("kernel", kernels, "self_device_time_total"), ("host op", host, "self_cpu_time_total")):
        if evs:
            print(f"  {'us/call':>9}  {'per call':>8}  {label}")
        for e in evs[:top]:
            print(f"  {getattr(e, attr) / calls:9.1f}  {e.count / calls:8.1f}  {e.key[:110]}")


def print_table(rows: List[dict]) -> None:
    cols = ["case", "impl", "us", "GBps", "samples_per_s", "fusedembed_speedup"]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = {"us": "{:.1f}", "GBps": "{:.0f}", "samples_per_s": "{:.0f}", "fusedembed_speedup": "{:.2f}x"}
    cells = [[fmt.get(c, "{}").format(r[c]) if c in r else "" for c in cols] for r in rows]
    headers = [{"case": "case", "impl": "impl", "us": "time (us)", "GBps": "GB/s",
                "samples_per_s": "samples/s", "fusedembed_speedup": "fusedembed faster by"}[c] for c in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
