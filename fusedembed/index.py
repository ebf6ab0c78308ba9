"""Nearest-neighbour search over embeddings, by inner product (cosine for the L2-normalised
embeddings fusedembed's models output).

* :class:`ExactIndex` (``"exact"``, the default, no dependency): blocked torch matmul + top-k on
  the CPU or GPU. The gallery is read in blocks of rows, so it may be a memory-mapped file
  larger than memory (:class:`fusedembed.embedfile.EmbeddingFile`), and no score matrix larger
  than ``block`` entries is ever held.
* :class:`FaissIndex` (``"flat"``: ``IndexFlatIP``, exact; ``"ivfpq"``: inverted lists with
  product-quantised codes, approximate, for galleries of millions), with the optional
  ``faiss-cpu`` (``pip install 'fusedembed[faiss]'``). ``benchmarks/bench_index.py`` measures
  the recall of IVF-PQ against exact search.

Both have ``search(queries, k) -> (scores (Q, k) float32, indices (Q, k) int64)``, best first
(k is capped at the gallery size; IVF-PQ gives index -1, score -inf, where its probed lists
hold fewer than k items); ``build_index(gallery, kind, **options)`` makes either. Ties: equal
scores are ordered by gallery index (the lowest first) within the returned k.

:func:`score_blocks` is the blocked scoring that the retrieval metrics use too: dot products
of query row blocks against the whole gallery, recomputed in float64 where float32 overflows.
"""

from typing import Iterator, Optional, Tuple

import numpy as np
import torch

DEFAULT_BLOCK = 1 << 22          # similarity entries per block (16 MiB of float32)
KINDS = ("exact", "flat", "ivfpq")


def block_scores(q: torch.Tensor, g: torch.Tensor, qname: str = "query", gname: str = "gallery",
                 first: int = 0) -> torch.Tensor:
    """Dot products ``q @ g.T`` of finite embeddings, never NaN or inf: float32 scores that
    overflow (entries around 1e20 square past the float32 range, and inf − inf is NaN, which
    compares false and would rank every match first) are recomputed in float64, where products
    of float32 values cannot overflow; float64 scores that overflow are an error. ``first``:
    index of q's first row, for the message."""
    s = q @ g.T
    if torch.isfinite(s).all():
        return s
    if s.dtype == torch.float32:
        s = q.double() @ g.double().T
        if torch.isfinite(s).all():
            return s
    i, j = (~torch.isfinite(s)).nonzero()[0].tolist()
    raise ValueError(f"{qname} · {gname} scores overflow {s.dtype} ({qname} {first + i}, {gname} {j}); "
                     "L2-normalise the embeddings")


def rows_per_block(n_cols: int, block: int) -> int:
    return max(1, block // max(n_cols, 1))


def score_blocks(queries: torch.Tensor, gallery: torch.Tensor, block: int = DEFAULT_BLOCK,
                 names: Tuple[str, str] = ("query", "gallery")) -> Iterator[Tuple[int, torch.Tensor]]:
    """``(first row, scores (rows, N))`` for consecutive row blocks of ``queries`` against the
    whole ``gallery`` (both finite 2-D tensors on one device), at most ``block`` scores each
    (one row at least)."""
    step = rows_per_block(len(gallery), block)
    for a in range(0, len(queries), step):
        yield a, block_scores(queries[a:a + step], gallery, *names, first=a)


def _matrix(x, name: str) -> torch.Tensor:
    """A finite float 2-D tensor (a copy only where the input is not one already)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (count, dim), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _order(scores: torch.Tensor, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row by score descending, equal scores by index ascending."""
    by_index = index.sort(dim=1, stable=True)
    s = scores.gather(1, by_index.indices)
    by_score = s.sort(dim=1, descending=True, stable=True)
    return by_score.values, by_index.values.gather(1, by_score.indices)


class ExactIndex:
    """Exact inner-product search. ``gallery``: (N, D) tensor, array or anything sliceable by
    rows with ``shape`` (a memory map, an :class:`~fusedembed.embedfile.EmbeddingFile`); rows
    are moved to ``device`` (default: the GPU when there is one) block by block in float32.
    With ``resident=True`` (default when the gallery is a tensor or array in memory) the whole
    gallery is put on the device once, for repeated searches."""

    kind = "exact"

    def __init__(self, gallery, *, device=None, block: int = DEFAULT_BLOCK, resident: Optional[bool] = None):
        from .devices import resolve_device

        shape = tuple(getattr(gallery, "shape", ()))
        if len(shape) != 2:
            raise ValueError(f"gallery must be 2-D (count, dim), got shape {shape}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.ntotal, self.dim = shape
        self.device = resolve_device(device, what="device")
        self.block = int(block)
        in_memory = isinstance(gallery, torch.Tensor) or (isinstance(gallery, np.ndarray)
                                                          and not isinstance(gallery, np.memmap))
        self._source = gallery
        self._resident = None
        if resident if resident is not None else in_memory:
            self._resident = _matrix(gallery, "gallery").to(self.device, torch.float32)

    def _chunks(self, rows: int) -> Iterator[Tuple[int, torch.Tensor]]:
        """(first index, gallery rows as float32 on the device), ``rows`` at a time."""
        for a in range(0, self.ntotal, rows):
            if self._resident is not None:
                yield a, self._resident[a:a + rows]
            else:
                yield a, _matrix(self._source[a:a + rows], f"gallery rows {a}..").to(self.device, torch.float32)

    def search(self, queries, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        k = min(_check_k(k), self.ntotal)
        q = _matrix(queries, "queries").to(self.device, torch.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, the gallery {self.dim}")
        # A resident gallery is scored whole; a streamed one in chunks of at most `block`
        # values. Query blocks keep each score matrix within `block` entries too.
        rows = self.ntotal if self._resident is not None else max(k, self.block // self.dim)
        qstep = rows_per_block(min(rows, self.ntotal), self.block)
        # float64 running best: scores recomputed in float64 (float32 overflow) keep their order.
        best_s = torch.full((len(q), k), float("-inf"), dtype=torch.float64, device=self.device)
        best_i = torch.full((len(q), k), -1, dtype=torch.long, device=self.device)
        for a, chunk in self._chunks(rows):
            for qa in range(0, len(q), qstep):
                sl = slice(qa, qa + qstep)
                top = block_scores(q[sl], chunk, "queries", "gallery", first=qa).topk(min(k, len(chunk)), dim=1)
                s, i = _order(torch.cat([best_s[sl], top.values.double()], 1),
                              torch.cat([best_i[sl], top.indices + a], 1))
                best_s[sl], best_i[sl] = s[:, :k], i[:, :k]
        return best_s.float().cpu(), best_i.cpu()


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the FAISS indexes need faiss: pip install 'fusedembed[faiss]' (faiss-cpu)") from None
    return faiss


def _pq_subquantizers(dim: int) -> int:
    """Default PQ size: the largest divisor of ``dim`` that is at most min(64, dim // 4) (codes
    of m bytes, 4+ dimensions per sub-vector)."""
    return next(m for m in range(max(1, min(64, dim // 4)), 0, -1) if dim % m == 0)


class FaissIndex:
    """A FAISS inner-product index over ``gallery`` (float32 on the CPU).

    kind ``"flat"``: ``IndexFlatIP`` (exact). ``"ivfpq"``: ``IndexIVFPQ`` with ``nlist`` lists
    (default ≈ 4·√N), ``m`` sub-quantizers of ``nbits`` bits (default: see
    :func:`_pq_subquantizers`), searching ``nprobe`` lists (default nlist / 16, at least 8); it
    is trained on ``train_size`` random gallery rows (default min(N, 256·nlist)) drawn with
    ``seed``. The gallery is added in blocks of ``add_block`` rows.
    """

    def __init__(self, gallery, kind: str = "flat", *, nlist: Optional[int] = None, m: Optional[int] = None,
                 nbits: int = 8, nprobe: Optional[int] = None, train_size: Optional[int] = None,
                 seed: int = 0, add_block: int = 65536):
        faiss = _faiss()
        if kind not in ("flat", "ivfpq"):
            raise ValueError(f"FaissIndex: kind must be 'flat' or 'ivfpq', got {kind!r}")
        shape = tuple(getattr(gallery, "shape", ()))
        if len(shape) != 2 or shape[0] < 1:
            raise ValueError(f"gallery must be 2-D (count, dim) with at least one row, got shape {shape}")
        n, d = shape
        self.kind, self.ntotal, self.dim = kind, n, d

        def rows(a, b):
            return np.ascontiguousarray(_matrix(gallery[a:b], "gallery").float().cpu().numpy())

        if kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        else:
            nlist = nlist or max(1, min(n // 39, int(4 * n ** 0.5)))
            m = m or _pq_subquantizers(d)
            if d % m:
                raise ValueError(f"FaissIndex: m ({m}) must divide the dimension {d}")
            train_size = min(n, train_size or 256 * nlist)
            if train_size < max(nlist, 2 ** nbits):
                raise ValueError(f"FaissIndex ivfpq: {n} gallery rows are too few to train nlist={nlist} "
                                 f"lists and 2^{nbits} PQ centroids; use kind='flat' or 'exact'")
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            pick = np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))
            sample = np.concatenate([rows(a, min(n, a + add_block))[pick[(pick >= a) & (pick < a + add_block)] - a]
                                     for a in range(0, n, add_block)])
            self.index.train(sample)
            self.index.nprobe = nprobe or max(8, nlist // 16)
            self.quantizer = quantizer                  # the IVF index does not own it in Python
        for a in range(0, n, add_block):
            self.index.add(rows(a, min(n, a + add_block)))

    def search(self, queries, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        k = _check_k(k)
        q = np.ascontiguousarray(_matrix(queries, "queries").float().cpu().numpy())
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, the gallery {self.dim}")
        scores, index = self.index.search(q, min(k, self.ntotal))
        s, i = torch.from_numpy(scores), torch.from_numpy(index).long()
        # IVF returns index -1 where the probed lists hold fewer than k items: last, at -inf.
        return _order(s.masked_fill(i < 0, float("-inf")), i)


def build_index(gallery, kind: str = "exact", **options):
    """An index over ``gallery`` (N, D): ``"exact"`` (:class:`ExactIndex`), ``"flat"`` or
    ``"ivfpq"`` (:class:`FaissIndex`); ``options`` go to the class."""
    if kind == "exact":
        return ExactIndex(gallery, **options)
    if kind in ("flat", "ivfpq"):
        return FaissIndex(gallery, kind, **options)
    raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
