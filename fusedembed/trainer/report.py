"""report.md and PNG plots of a finished run (matplotlib is optional: without it, text only)."""

from pathlib import Path
from typing import List


def _plot(rows: List[dict], keys: List[str], path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=key, marker="." if len(pts) < 30 else None)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(run_dir, recipe, rows: List[dict], best: dict) -> Path:
    run_dir = Path(run_dir)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if any(k.startswith("val/") for k in r)]
    loss_keys = sorted({k for r in train_rows for k in r if k == "loss" or k.startswith("loss/")})
    eval_keys = sorted({k for r in eval_rows for k in r if k.startswith("val/")})
    lines = ["# Training report", ""] + ([recipe.description, ""] if recipe.description else [])
    if train_rows:
        last = train_rows[-1]
        speed = [r["samples_per_s"] for r in train_rows if r.get("samples_per_s")]
        lines += [f"- steps: {last['step']}", f"- final loss: {last['loss']:.4f}",
                  f"- throughput: {sum(speed) / len(speed):.1f} samples/s (mean of log intervals)" if speed else ""]
    if best.get("value") is not None:
        lines.append(f"- best {best['metric']}: {best['value']:.4f} at step {best['step']} (best.pt)")
    if eval_rows:
        lines += ["", "## Evaluation", "", "| step | " + " | ".join(k[4:] for k in eval_keys) + " |",
                  "|---" * (len(eval_keys) + 1) + "|"]
        lines += ["| " + " | ".join([str(r["step"])] + [f"{r[k]:.4f}" if r.get(k) is not None else ""
                                                          for k in eval_keys]) + " |" for r in eval_rows]
    if _plot(train_rows, loss_keys, run_dir / "loss.png", "training losses"):
        lines += ["", "## Losses", "", "![losses](loss.png)"]
    if eval_keys and _plot(eval_rows, eval_keys, run_dir / "eval.png", "evaluation"):
        lines += ["", "![evaluation](eval.png)"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
