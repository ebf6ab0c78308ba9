"""Instance-level image retrieval (MultiGrain's evaluations): INRIA Holidays mAP, UKBench
N-S score, recall of augmented copies.

Scores are dot products of the embeddings, computed per block of queries on their device
(recomputed in float64 where they overflow float32). NaN labels or groups are refused.
Ties follow ``ties`` (see :mod:`.retrieval`): pessimistic by default. mAP and recall in
percent; the N-S score in [0, 4].
"""

import torch

from ._common import DEFAULT_BLOCK, check_ties, embeddings, no_nan, pct, ranked_relevance, score_blocks
from .multilabel import ranked_ap
from .retrieval import recall_summary, target_ranks

AP_KINDS = ("trapezoid", "standard")


def trapezoid_ap(rel: torch.Tensor) -> torch.Tensor:
    """AP of ranked relevance rows by the trapezoid rule of the Holidays evaluation: for the
    k-th positive (0-based) at position r (0-based), the area between precisions k/r
    (1 when r = 0) and (k+1)/(r+1) over a recall step of 1/npos."""
    r = torch.arange(rel.shape[1], device=rel.device, dtype=torch.float64)
    k = rel.cumsum(1).double() - 1
    p0 = torch.where(r > 0, k / r.clamp_min(1), torch.ones_like(k))
    p1 = (k + 1) / (r + 1)
    npos = rel.sum(1).double()
    return ((p0 + p1) / 2 * rel).sum(1) / npos


def instance_map(query, gallery, query_labels, gallery_labels, exclude=None,
                 ap: str = "trapezoid", ties: str = "pessimistic",
                 block: int = DEFAULT_BLOCK) -> dict:
    """mAP of queries over a gallery; the relevant items are those with the query's label.

    exclude: (Q,) gallery index removed from query q's ranking (its own image when the queries
    are in the gallery), −1 for none. Queries with no relevant item are left out
    (``num_queries`` counts the rest).
    """
    check_ties(ties)
    if ap not in AP_KINDS:
        raise ValueError(f"ap must be one of {AP_KINDS}, got {ap!r}")
    q = embeddings(query, "query")
    g = embeddings(gallery, "gallery").to(q.device)
    ql = no_nan(torch.as_tensor(query_labels, device=q.device).reshape(-1), "query_labels")
    gl = no_nan(torch.as_tensor(gallery_labels, device=q.device).reshape(-1), "gallery_labels")
    if len(ql) != len(q) or len(gl) != len(g):
        raise ValueError("one label per query and per gallery item")
    ex = (torch.full((len(q),), -1, dtype=torch.long, device=q.device) if exclude is None
          else torch.as_tensor(exclude, device=q.device).long().reshape(-1))
    if len(ex) != len(q) or (ex >= len(g)).any() or (ex < -1).any():
        raise ValueError(f"exclude must hold one gallery index in [-1, {len(g)}) per query")
    def relevance(a, b):
        rel = ql[a:b, None] == gl[None, :]
        valid = torch.ones_like(rel)
        rows = (ex[a:b] >= 0).nonzero().reshape(-1)
        valid[rows, ex[a:b][rows]] = False
        return rel, valid

    return _map_over(q, g, relevance, ap, ties, block)


def _map_over(q, g, relevance, ap, ties, block) -> dict:
    """mAP of ranked rows: ``relevance(a, b)`` gives the (relevant, valid) masks of queries
    a..b-1; queries with no relevant item are left out."""
    aps = []
    for a, s in score_blocks(q, g, block):
        rel, valid = relevance(a, a + len(s))
        ranked = ranked_relevance(s, rel, ties, valid)
        aps.append(trapezoid_ap(ranked) if ap == "trapezoid" else ranked_ap(ranked))
    aps = torch.cat(aps)
    counted = ~torch.isnan(aps)
    if not counted.any():
        raise ValueError("no query has a relevant gallery item")
    return {"map": pct(aps[counted].mean()), "num_queries": float(counted.sum())}


def _index_lists(lists, num_queries: int, size: int, name: str, device) -> torch.Tensor:
    if len(lists) != num_queries:
        raise ValueError(f"{name} must hold one index list per query ({num_queries}), got {len(lists)}")
    mask = torch.zeros(num_queries, size, dtype=torch.bool, device=device)
    for i, items in enumerate(lists):
        idx = torch.as_tensor(items, dtype=torch.long, device=device).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= size):
            raise ValueError(f"{name}[{i}]: indices must be in [0, {size}), got {idx.min()}..{idx.max()}")
        mask[i, idx] = True
    return mask


def listed_map(query, gallery, positives, junk=None, ap: str = "trapezoid", ties: str = "pessimistic",
               block: int = DEFAULT_BLOCK) -> dict:
    """mAP where each query lists its relevant gallery items (``positives[q]``: gallery
    indices) and the items to ignore (``junk[q]``: removed from its ranking, as in the
    revisited Oxford/Paris protocol). Queries with no positive are left out."""
    check_ties(ties)
    if ap not in AP_KINDS:
        raise ValueError(f"ap must be one of {AP_KINDS}, got {ap!r}")
    q = embeddings(query, "query")
    g = embeddings(gallery, "gallery").to(q.device)
    pos = _index_lists(positives, len(q), len(g), "positives", q.device)
    ok = ~_index_lists(junk, len(q), len(g), "junk", q.device) if junk is not None else torch.ones_like(pos)
    return _map_over(q, g, lambda a, b: (pos[a:b], ok[a:b]), ap, ties, block)


def holidays_map(embeddings_, groups, queries=None, ap: str = "trapezoid",
                 ties: str = "pessimistic", block: int = DEFAULT_BLOCK) -> dict:
    """INRIA Holidays protocol: every image is in the database; each query (default: the first
    image of each group, as in Holidays where it is the group's xxxx00.jpg) ranks all the
    others — itself excluded — and the relevant images are the rest of its group."""
    x = embeddings(embeddings_, "embeddings")
    grp = no_nan(torch.as_tensor(groups).reshape(-1), "groups")
    if len(grp) != len(x):
        raise ValueError(f"{len(grp)} groups for {len(x)} images")
    if queries is None:
        seen, queries = set(), []
        for i, gid in enumerate(grp.tolist()):
            if gid not in seen:
                seen.add(gid)
                queries.append(i)
    qi = torch.as_tensor(queries, dtype=torch.long).reshape(-1)
    return instance_map(x[qi.to(x.device)], x, grp[qi], grp, exclude=qi, ap=ap, ties=ties,
                        block=block)


def ukbench_score(embeddings_, groups=None, ties: str = "pessimistic",
                  block: int = DEFAULT_BLOCK) -> dict:
    """UKBench N-S score: each image queries the whole set (itself included); the score is the
    number of its group's images (4 per group; default groups ``i // 4``) among the top 4,
    averaged over queries — 4.0 is perfect."""
    x = embeddings(embeddings_, "embeddings")
    grp = no_nan((torch.arange(len(x)) // 4 if groups is None else torch.as_tensor(groups)).reshape(-1),
                 "groups")
    if len(grp) != len(x):
        raise ValueError(f"{len(grp)} groups for {len(x)} images")
    grp = grp.to(x.device)
    hits = []
    for a, s in score_blocks(x, x, block, ("embeddings", "embeddings")):
        rel = grp[a:a + len(s), None] == grp[None, :]
        hits.append(ranked_relevance(s, rel, ties)[:, :4].sum(1))
    return {"ns_score": float(torch.cat(hits).double().mean())}


def copy_recall(query, gallery, query_to_gallery, ks=(1, 5, 10), ties: str = "pessimistic",
                block: int = DEFAULT_BLOCK) -> dict:
    """Recall of augmented copies: query q is a transformed copy of
    ``gallery[query_to_gallery[q]]``; R@k = % of queries whose original ranks in the top k
    (plus median and mean rank)."""
    return recall_summary(target_ranks(query, gallery, query_to_gallery, ties, block), ks)
