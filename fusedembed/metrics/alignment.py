"""Word → region alignment (Karpathy & Fei-Fei): how well an assignment of each word to an
image region (e.g. ``fusedembed.ops.mrf_viterbi``) matches the ground truth.

Inputs are (B, N): ``assignment`` the region chosen per word (−1 = none / padding),
``truth`` the region each word describes (−1 = a word that describes no region, like "of";
such words are not scored), ``lengths`` (B,) words per sentence (default N), and optional
``groups`` (B, K) region → group id: regions of one group are identical objects, so any of
them is right (the scenes dataset's ``object_groups``). Float inputs must hold whole numbers
(NaN is refused, not read as −1). Values in percent.
"""

import torch


def _indices(x, name: str, device=None) -> torch.Tensor:
    """x as int64; float x must hold whole numbers (``.long()`` would turn NaN into a huge
    negative index, that is "no region", and 2.5 into 2)."""
    x = torch.as_tensor(x, device=device)
    if x.is_floating_point():
        bad = ~torch.isfinite(x) | (x != x.floor())
        if bad.any():
            at = tuple(bad.nonzero()[0].tolist())
            raise ValueError(f"{name} must hold whole numbers, got {x[at].item()} at index {at}")
    return x.long()


def _inputs(assignment, truth, lengths, groups):
    a = _indices(assignment, "assignment")
    t = _indices(truth, "truth", a.device)
    if a.ndim != 2 or a.shape != t.shape:
        raise ValueError(f"assignment {tuple(a.shape)} and truth {tuple(t.shape)} must be the "
                         "same (B, N) shape")
    pos = torch.arange(a.shape[1], device=a.device)[None, :]
    if lengths is None:
        inside = torch.ones_like(a, dtype=torch.bool)
    else:
        n = _indices(lengths, "lengths", a.device).reshape(-1, 1)
        if len(n) != len(a) or (n < 0).any() or (n > a.shape[1]).any():
            raise ValueError(f"lengths must be (B,) with values in [0, {a.shape[1]}]")
        inside = pos < n
    if groups is not None:
        g = _indices(groups, "groups", a.device)
        if g.ndim != 2 or len(g) != len(a):
            raise ValueError("groups must be (B, K)")
        k = g.shape[1]
        for name, x in (("assignment", a), ("truth", t)):
            if (x[inside] >= k).any():
                raise ValueError(f"{name} holds a region index >= K={k} of groups")
        # Map region indices to group ids (−1 stays −1), then compare groups.
        a = torch.where((a >= 0) & inside, g.gather(1, a.clamp(0, k - 1)), -1)
        t = torch.where((t >= 0) & inside, g.gather(1, t.clamp(0, k - 1)), -1)
    return a, t, inside


def alignment_metrics(assignment, truth, lengths=None, groups=None) -> dict:
    """``word_accuracy``: % of grounded words (truth ≥ 0, inside the sentence) assigned to
    their region (or one of its group). ``snippet_precision``: the assignment cuts each
    sentence into snippets — maximal runs of consecutive words on one region, the phrases the
    model would describe that region with; a snippet holding at least one grounded word is
    counted, and it is precise when ALL its grounded words belong to its region.
    ``snippet_recall``: the truth's phrases — maximal runs of consecutive words describing one
    region (or group) — that the assignment puts wholly on their region, so that one snippet
    holds the whole phrase. ``num_words``, ``num_snippets`` and ``num_phrases`` give the
    denominators."""
    a, t, inside = _inputs(assignment, truth, lengths, groups)
    grounded = inside & (t >= 0)
    correct = grounded & (a == t)
    # Snippets: a new run starts where the region changes (or at the sentence start).
    start = torch.ones_like(a, dtype=torch.bool)
    start[:, 1:] = a[:, 1:] != a[:, :-1]
    run = torch.cumsum(start.reshape(-1).long(), 0) - 1         # run id per word, flattened
    member = (inside & (a >= 0)).reshape(-1)
    n_runs = int(run[-1]) + 1 if run.numel() else 0
    has_grounded = torch.zeros(n_runs, dtype=torch.long, device=a.device)
    wrong = torch.zeros(n_runs, dtype=torch.long, device=a.device)
    g_flat = (grounded.reshape(-1) & member).long()
    has_grounded.index_add_(0, run, g_flat)
    wrong.index_add_(0, run, g_flat * (~correct.reshape(-1)).long())
    counted = has_grounded > 0
    n_words, n_snip = int(grounded.sum()), int(counted.sum())
    # Phrases: runs of grounded words with one truth region; recalled when none is wrong.
    pstart = grounded.clone()
    pstart[:, 1:] &= ~(grounded[:, :-1] & (t[:, 1:] == t[:, :-1]))
    phrase = torch.cumsum(pstart.reshape(-1).long(), 0) - 1
    n_phr = int(pstart.sum())
    missed = torch.zeros(max(n_phr, 1), dtype=torch.long, device=a.device)
    g = grounded.reshape(-1)
    missed.index_add_(0, phrase[g], (~correct.reshape(-1)[g]).long())
    return {
        "word_accuracy": 100.0 * int(correct.sum()) / n_words if n_words else float("nan"),
        "snippet_precision": (100.0 * int((counted & (wrong == 0)).sum()) / n_snip
                              if n_snip else float("nan")),
        "snippet_recall": 100.0 * int((missed[:n_phr] == 0).sum()) / n_phr if n_phr else float("nan"),
        "num_words": float(n_words),
        "num_snippets": float(n_snip),
        "num_phrases": float(n_phr),
    }
