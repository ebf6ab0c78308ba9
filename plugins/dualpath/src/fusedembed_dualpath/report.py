"""What the demo shows: the retrieval table (model vs chance vs baseline) and a picture of
retrieval examples (query caption → top-5 images, the right one framed green)."""

import math
from pathlib import Path
from typing import List

import torch

from fusedembed.metrics import target_ranks

COLUMNS = [("i2t_r1", "R@1"), ("i2t_r5", "R@5"), ("i2t_r10", "R@10"), ("i2t_medr", "medr"),
           ("t2i_r1", "R@1"), ("t2i_r5", "R@5"), ("t2i_r10", "R@10"), ("t2i_medr", "medr"), ("rsum", "rsum")]


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def chance_metrics(caption_to_image: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Expected R@K and median rank of a random ranking (exact, not sampled). t2i: the image
    is uniform over N ranks; i2t: the best of an image's c captions among M."""
    counts = torch.bincount(torch.as_tensor(caption_to_image).long()).tolist()
    n, m = len(counts), sum(counts)

    def i2t_cdf(k):
        return sum(1 - math.exp(_log_comb(m - c, k) - _log_comb(m, k)) if m - c >= k else 1.0
                   for c in counts) / n

    out = {f"i2t_r{k}": 100 * i2t_cdf(k) for k in ks} | {f"t2i_r{k}": 100 * min(k / n, 1) for k in ks}
    lo, hi = 1, m                 # the first k with i2t_cdf(k) >= 0.5 (the CDF only grows)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if i2t_cdf(mid) >= 0.5 else (mid + 1, hi)
    out["i2t_medr"] = float(lo)
    out["t2i_medr"] = float(math.ceil(n / 2))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def table(rows: List[tuple]) -> str:
    """Markdown table of ``(name, metrics)`` rows: both directions, R@1/5/10, medr, rsum."""
    head = ("| model | " + " | ".join(f"i2t {c}" if k.startswith("i2t") else f"t2i {c}" if k.startswith("t2i")
                                      else c for k, c in COLUMNS) + " |")
    lines = [head, "|---" + "|---:" * len(COLUMNS) + "|"]
    for name, m in rows:
        cells = [f"{m[k]:.0f}" if k.endswith("medr") else f"{m[k]:.1f}" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retrieval_examples(img: torch.Tensor, txt: torch.Tensor, caption_to_image: torch.Tensor, dataset, path,
                       queries: int = 6, k: int = 5) -> Path:
    """PNG: ``queries`` captions (spread over the split), each with its top-``k`` images; the
    caption's own image is framed green (others grey), and its rank is printed when outside."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.as_tensor(caption_to_image).long()
    picks = torch.linspace(0, len(txt) - 1, queries).round().long().tolist()
    scores = txt[picks] @ img.T
    top = scores.topk(k, dim=1).indices
    fig, axes = plt.subplots(queries, k + 1, figsize=(2 * (k + 1) + 2, 2.1 * queries),
                             gridspec_kw={"width_ratios": [2.2] + [1] * k})
    # Optimistic: the rank the picture shows, equal scores drawn after the right image.
    ranks = target_ranks(txt[picks], img, g[picks], ties="optimistic")
    for r, j in enumerate(picks):
        truth = int(g[j])
        rank = int(ranks[r])
        ax = axes[r, 0]
        ax.axis("off")
        words, lines, line = dataset.texts[j].split(), [], ""
        for w in words:                                  # wrap by hand: fixed-width panel
            if len(line) + len(w) > 26:
                lines.append(line)
                line = ""
            line = f"{line} {w}".strip()
        lines.append(line)
        ax.text(0, 0.5, "\n".join(lines) + f"\n\n(true image: rank {rank})", va="center", fontsize=9)
        for c in range(k):
            ax = axes[r, c + 1]
            i = int(top[r, c])
            ax.imshow(dataset.load_image(i).permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            hit = i == truth
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if hit else "0.7")
                spine.set_linewidth(5 if hit else 1)
            ax.set_title(f"#{c + 1}" + (" ✓" if hit else ""), fontsize=9, color="tab:green" if hit else "black")
    fig.suptitle("text → image retrieval: query caption, top-5 images (green frame: the caption's image)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
