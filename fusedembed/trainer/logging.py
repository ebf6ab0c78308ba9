"""metrics.jsonl (plus TensorBoard scalars when the package is installed), the progress display
and plain log lines (rank 0 only)."""

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Optional


class MetricsLog:
    """Appends one JSON object per line. A run resumed from the checkpoint of step
    ``resume_step`` first drops the rows of later steps (logged after that checkpoint, before
    the kill), so no step appears twice. With the ``tensorboard`` package installed, numeric
    values also go to ``run_dir/tensorboard`` (purged past ``resume_step`` likewise)."""

    def __init__(self, run_dir, enabled: bool = True, resume_step: Optional[int] = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and resume_step is not None and self.path.is_file():
            kept = [row for row in self.read() if row.get("step", 0) <= resume_step]
            tmp = self.path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
            tmp.replace(self.path)
        if enabled and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def read(self) -> list:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:      # the half line of a killed write
                continue
        return rows


class Progress:
    """tqdm bar at a terminal; otherwise the caller's ``out`` gets a line per log interval."""

    def __init__(self, enabled: bool, out=None, stream=None):
        stream = stream or sys.stderr
        self.enabled, self.out = enabled, out or (lambda line: print(line, flush=True))
        self.bar = None
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()

    def start(self, total: int, initial: int, desc: str) -> None:
        if self.tty:
            from tqdm import tqdm
            self.close()
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text[:120], refresh=False)
            self.bar.write(text)
        else:
            self.out(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
