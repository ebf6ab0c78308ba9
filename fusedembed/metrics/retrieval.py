"""Image ↔ text retrieval from embeddings, several captions per image.

Scores are dot products (L2-normalise the embeddings first for cosine similarity), computed
in row blocks of at most ``block`` entries, on the embeddings' device (GPU when they are
there), so 5K images × 25K captions never hold the full matrix. Scores that overflow float32
(finite embeddings with entries near 1e20) are recomputed in float64, so they never rank as
NaN.

Ranks are 1-based. i2t: an image's rank is that of its best-ranked caption; t2i: a caption's
rank is that of its image — or, given identity labels (person search), of the best-ranked image
of its identity (``label_ranks``: the best-ranked item sharing the query's label). Ties (equal
scores, compared exactly): ``"pessimistic"`` (default) ranks every non-matching item with the
same score before the match — so a collapsed model whose scores are all equal gets the worst
rank, not R@1 = 100 — ``"optimistic"`` after it.
Other captions of the same image never count against an image's best caption.

Values: recalls in percent, ranks in positions; ``rsum`` = sum of the six recalls.
"""

import torch

from ._common import DEFAULT_BLOCK, check_ks, check_ties, embeddings, no_nan, pct, score_blocks

MEDIANS = ("floor", "recall")


def _mapping(txt_to_img, num_txt, num_img, device):
    g = torch.as_tensor(txt_to_img, device=device).long().reshape(-1)
    if g.numel() != num_txt:
        raise ValueError(f"txt_to_img has {g.numel()} entries for {num_txt} captions")
    if num_txt and (g.min() < 0 or g.max() >= num_img):
        raise ValueError(f"txt_to_img values must be in [0, {num_img})")
    return g


def _labels(labels, count: int, name: str, device) -> torch.Tensor:
    x = torch.as_tensor(labels, device=device).reshape(-1)
    if x.numel() != count:
        raise ValueError(f"{name} has {x.numel()} entries for {count} items")
    return no_nan(x, name)


def _ranks(q, g, ql, gl, ties, block, names=("query", "gallery")) -> torch.Tensor:
    """label_ranks on checked embeddings q, g (one device) and labels ql, gl (on it too);
    ``names`` of q and g for the messages."""
    lonely = (~torch.isin(ql, gl)).nonzero()
    if len(lonely):
        k = int(lonely[0])
        raise ValueError(f"query {k} has no gallery item with its label {ql[k].item()}")
    out = torch.empty(len(q), dtype=torch.long, device=q.device)
    for a, s in score_blocks(q, g, block, names):
        out[a:a + len(s)] = _rank_rows(s, ql[a:a + len(s), None] == gl[None, :], ties)
    return out.cpu()


def _rank_rows(s: torch.Tensor, match: torch.Tensor, ties: str) -> torch.Tensor:
    """Per row of scores ``s``, the 1-based rank of its best-scoring match."""
    best = s.masked_fill(~match, float("-inf")).amax(1, keepdim=True)
    # Pessimistic: a non-match scoring equal to the best match is ahead of it; optimistic:
    # only those strictly above.
    ahead = (s >= best) if ties == "pessimistic" else (s > best)
    return 1 + (ahead & ~match).count_nonzero(1)


def _pair(queries, gallery, qname: str, gname: str) -> tuple[torch.Tensor, torch.Tensor]:
    q = embeddings(queries, qname)
    g = embeddings(gallery, gname).to(q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"{qname} dim {q.shape[1]} != {gname} dim {g.shape[1]}")
    return q, g


def label_ranks(queries, gallery, query_labels, gallery_labels, ties: str = "pessimistic",
                block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """1-based rank, in query q's ranking of the gallery, of the best-ranked item that shares
    q's label: every item with the label is a match, the others are what can rank ahead."""
    check_ties(ties)
    q, g = _pair(queries, gallery, "query", "gallery")
    return _ranks(q, g, _labels(query_labels, len(q), "query_labels", q.device),
                  _labels(gallery_labels, len(g), "gallery_labels", q.device), ties, block)


def target_ranks(queries, gallery, targets, ties: str = "pessimistic",
                 block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """1-based rank of ``gallery[targets[q]]`` in the ranking of query q (t2i, copies)."""
    check_ties(ties)
    q, g = _pair(queries, gallery, "query", "gallery")
    t = _mapping(targets, len(q), len(g), q.device)
    return _ranks(q, g, t, torch.arange(len(g), device=q.device), ties, block)


def retrieval_ranks(img, txt, txt_to_img, ties: str = "pessimistic", block: int = DEFAULT_BLOCK,
                    image_labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t ranks (N,), t2i ranks (M,)), 1-based, on CPU.

    image_labels: (N,) identity of each image (person search, CUHK-PEDES): a caption then
    matches every image of its image's identity, and an image every caption of its identity.
    By default an image matches only its own captions and a caption only its image.
    """
    check_ties(ties)
    img, txt = _pair(img, txt, "img", "txt")
    g = _mapping(txt_to_img, len(txt), len(img), img.device)
    has = torch.bincount(g, minlength=len(img))
    if (has == 0).any():
        raise ValueError(f"image {int((has == 0).nonzero()[0])} has no caption")
    labels = (torch.arange(len(img), device=img.device) if image_labels is None
              else _labels(image_labels, len(img), "image_labels", img.device))
    return (_ranks(img, txt, labels, labels[g], ties, block, ("img", "txt")),
            _ranks(txt, img, labels[g], labels, ties, block, ("txt", "img")))


def recall_summary(ranks, ks=(1, 5, 10), median: str = "floor", prefix: str = "") -> dict:
    """R@k (percent), median rank and mean rank of 1-based ranks.

    median: ``"floor"`` — ⌊median⌋ (the VSE++ convention, floor(median of 0-based) + 1);
    ``"recall"`` — the Dual-Path authors' first K with R@K > 50 % (the upper middle value
    for an even count).
    """
    if median not in MEDIANS:
        raise ValueError(f"median must be one of {MEDIANS}, got {median!r}")
    ks = check_ks(ks)
    r = torch.as_tensor(ranks).reshape(-1)
    if r.numel() == 0:
        raise ValueError("no ranks")
    bad = r < 1
    if r.is_floating_point():
        bad |= ~torch.isfinite(r) | (r != r.floor())
    if bad.any():
        raise ValueError(f"ranks must be 1-based integers, got {r[bad][0].item()}")
    r = r.long()
    out = {f"{prefix}r{k}": pct((r <= k).double().mean()) for k in ks}
    srt = r.sort().values.double()
    n = len(srt)
    if median == "floor":
        med = torch.floor(srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2)
    else:
        med = srt[n // 2]
    out[f"{prefix}medr"] = float(med)
    out[f"{prefix}meanr"] = float(srt.mean())
    return out


def retrieval_metrics(img, txt, txt_to_img, ks=(1, 5, 10), ties: str = "pessimistic",
                      median: str = "floor", block: int = DEFAULT_BLOCK, image_labels=None) -> dict:
    """i2t_r1, i2t_r5, i2t_r10, i2t_medr, i2t_meanr, the same for t2i, and rsum
    (``image_labels``: see :func:`retrieval_ranks`)."""
    i2t, t2i = retrieval_ranks(img, txt, txt_to_img, ties, block, image_labels)
    out = recall_summary(i2t, ks, median, "i2t_") | recall_summary(t2i, ks, median, "t2i_")
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def score_retrieval_ranks(scores, txt_to_img, ties: str = "pessimistic",
                          block: int = DEFAULT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t ranks (N,), t2i ranks (M,)) from a given (N images, M captions) score matrix, for
    models whose image-caption score is not a dot product of two embeddings (region-word
    alignment); the ranks follow :func:`retrieval_ranks`, ``block`` rows at a time."""
    check_ties(ties)
    S = embeddings(scores, "scores")
    N, M = S.shape
    g = _mapping(txt_to_img, M, N, S.device)
    has = torch.bincount(g, minlength=N)
    if (has == 0).any():
        raise ValueError(f"image {int((has == 0).nonzero()[0])} has no caption")
    rows = max(1, block // max(1, max(N, M)))
    images = torch.arange(N, device=S.device)
    i2t = torch.cat([_rank_rows(S[a:a + rows], images[a:a + rows, None] == g[None, :], ties)
                     for a in range(0, N, rows)]) if N else torch.zeros(0, dtype=torch.long)
    St = S.t()
    t2i = torch.cat([_rank_rows(St[a:a + rows], g[a:a + rows, None] == images[None, :], ties)
                     for a in range(0, M, rows)]) if M else torch.zeros(0, dtype=torch.long)
    return i2t.cpu(), t2i.cpu()


def score_retrieval_metrics(scores, txt_to_img, ks=(1, 5, 10), ties: str = "pessimistic",
                            median: str = "floor") -> dict:
    """:func:`retrieval_metrics` from a given (N images, M captions) score matrix."""
    i2t, t2i = score_retrieval_ranks(scores, txt_to_img, ties)
    out = recall_summary(i2t, ks, median, "i2t_") | recall_summary(t2i, ks, median, "t2i_")
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def score_coco_retrieval(scores, txt_to_img, folds: int = 5, ks=(1, 5, 10), ties: str = "pessimistic",
                         median: str = "floor") -> dict:
    """:func:`coco_retrieval` (``1k_*`` fold means, ``5k_*`` the whole set) from a given
    (N images, M captions) score matrix."""
    S = embeddings(scores, "scores")
    g = _mapping(txt_to_img, S.shape[1], S.shape[0], "cpu")
    if folds < 1 or len(S) % folds:
        raise ValueError(f"{len(S)} images do not split into {folds} equal folds")
    size = len(S) // folds
    per_fold = []
    for f in range(folds):
        sel = ((g >= f * size) & (g < (f + 1) * size)).nonzero().reshape(-1)
        per_fold.append(score_retrieval_metrics(S[f * size:(f + 1) * size][:, sel.to(S.device)],
                                                g[sel] - f * size, ks, ties, median))
    out = {f"1k_{k}": sum(m[k] for m in per_fold) / folds for k in per_fold[0]}
    out |= {f"5k_{k}": v for k, v in score_retrieval_metrics(S, g, ks, ties, median).items()}
    return out


def chance_retrieval_metrics(num_images: int, captions_per_image: int, ks=(1, 5, 10)) -> dict:
    """Expected R@k (percent) of a random ranking: i2t (the best of an image's c captions
    among M = N*c within the top k) = 1 - C(M-c, k)/C(M, k); t2i = k/N."""
    ks = check_ks(ks)
    N, c = int(num_images), int(captions_per_image)
    if N < 1 or c < 1:
        raise ValueError(f"chance_retrieval_metrics: num_images and captions_per_image must be >= 1, "
                         f"got {N} and {c}")
    M = N * c
    out = {}
    for k in ks:
        miss = 1.0
        for j in range(min(k, M)):
            miss *= max(0.0, (M - c - j) / (M - j))
        out[f"i2t_r{k}"] = pct(1.0 - miss)
    for k in ks:
        out[f"t2i_r{k}"] = pct(min(1.0, k / N))
    return out


def coco_retrieval(img, txt, txt_to_img, folds: int = 5, ks=(1, 5, 10),
                   ties: str = "pessimistic", median: str = "floor",
                   block: int = DEFAULT_BLOCK) -> dict:
    """COCO protocol: ``1k_*`` = mean over ``folds`` consecutive folds of N/folds images
    (1000 each for the 5K test set) with their captions; ``5k_*`` = the whole set."""
    img, txt = embeddings(img, "img"), embeddings(txt, "txt")
    g = _mapping(txt_to_img, len(txt), len(img), "cpu")
    if folds < 1 or len(img) % folds:
        raise ValueError(f"{len(img)} images do not split into {folds} equal folds")
    size = len(img) // folds
    per_fold = []
    for f in range(folds):
        sel = ((g >= f * size) & (g < (f + 1) * size)).nonzero().reshape(-1)
        per_fold.append(retrieval_metrics(img[f * size:(f + 1) * size], txt[sel.to(txt.device)],
                                          g[sel] - f * size, ks, ties, median, block))
    out = {f"1k_{k}": sum(m[k] for m in per_fold) / folds for k in per_fold[0]}
    out |= {f"5k_{k}": v for k, v in retrieval_metrics(img, txt, g, ks, ties, median,
                                                       block).items()}
    return out
