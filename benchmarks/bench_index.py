"""Nearest-neighbour search: fusedembed's exact index vs FAISS flat and IVF-PQ — recall and time.

The gallery is synthetic: N unit vectors in D dimensions drawn around N/100 random centres
(spread 0.5 / sqrt(D) per dimension, renormalised), queries drawn the same way. That gives
the clustered structure IVF relies on, as real embeddings have; it is not a real embedding
set, so the recall of IVF-PQ on yours will differ (measure it with --gallery FILE, an
embedding file from `fusedembed embed`, queries drawn from its rows plus noise).

Figures per index: build seconds, search seconds for Q queries (top 10), bytes per vector,
1-recall@10 (the true nearest neighbour is among the 10 returned) and 10-recall@10 (share of
the true 10 nearest returned), against exact search.

Usage: python benchmarks/bench_index.py [--quick] [--n 200000] [--dim 256] [--json rows.json]
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from fusedembed.index import build_index


def around(centres, n, seed, spread=0.5):
    """n unit vectors, each near a random one of ``centres``."""
    g = torch.Generator().manual_seed(seed)
    d = centres.shape[1]
    x = centres[torch.randint(len(centres), (n,), generator=g)]
    return F.normalize(x + spread / d ** 0.5 * torch.randn(n, d, generator=g), dim=1)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="gallery size")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--gallery", help="an embedding file to use instead of the synthetic gallery")
    ap.add_argument("--nprobe", default="8,32,128", help="IVF lists searched, comma-separated")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="of the exact index")
    ap.add_argument("--quick", action="store_true", help="20,000 vectors of 64 dimensions")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.queries = 20_000, 64, 200
    try:
        import faiss
    except ImportError:
        print("bench_index: FAISS is not installed (pip install 'fusedembed[faiss]'); exact index only",
              file=sys.stderr)
        faiss = None
    if args.gallery:
        from fusedembed.embedfile import EmbeddingFile

        gallery = EmbeddingFile(args.gallery)[:].float()
        pick = torch.randperm(len(gallery), generator=torch.Generator().manual_seed(1))[:args.queries]
        queries = F.normalize(gallery[pick] + 0.05 * torch.randn(len(pick), gallery.shape[1]), dim=1)
        what = f"{args.gallery}: {tuple(gallery.shape)}"
    else:
        k = max(1, args.n // 100)
        centres = F.normalize(torch.randn(k, args.dim, generator=torch.Generator().manual_seed(0)), dim=1)
        gallery, queries = around(centres, args.n, seed=1), around(centres, args.queries, seed=2)
        what = f"synthetic clustered: {args.n} x {args.dim}, {k} centres"
    n, d = gallery.shape
    print(f"gallery {what}; {len(queries)} queries, top 10; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads" + (f", faiss {faiss.__version__}" if faiss else ""))

    exact, build_s = timed(lambda: build_index(gallery, "exact", device=args.device))
    (truth_s, truth), search_s = timed(lambda: exact.search(queries, 10))
    rows = [{"index": f"exact ({args.device})", "build_s": build_s, "search_s": search_s, "bytes_per_vector": 4 * d,
             "recall1@10": 1.0, "recall10@10": 1.0}]

    def score(found):
        r1 = (found == truth[:, :1]).any(1).float().mean().item()
        r10 = sum(len(set(a.tolist()) & set(t.tolist())) for a, t in zip(found, truth)) / truth.numel()
        return r1, r10

    if faiss is not None:
        flat, build_s = timed(lambda: build_index(gallery, "flat"))
        (_, found), search_s = timed(lambda: flat.search(queries, 10))
        r1, r10 = score(found)
        rows.append({"index": "faiss flat", "build_s": build_s, "search_s": search_s, "bytes_per_vector": 4 * d,
                     "recall1@10": r1, "recall10@10": r10})
        ivf, build_s = timed(lambda: build_index(gallery, "ivfpq"))
        m, nlist = ivf.index.pq.M, ivf.index.nlist
        for nprobe in (int(p) for p in args.nprobe.split(",")):
            ivf.index.nprobe = min(nprobe, nlist)
            (_, found), search_s = timed(lambda: ivf.search(queries, 10))
            r1, r10 = score(found)
            rows.append({"index": f"faiss ivfpq nlist={nlist} m={m} nprobe={ivf.index.nprobe}", "build_s": build_s,
                         "search_s": search_s, "bytes_per_vector": m, "recall1@10": r1, "recall10@10": r10})
    print(f"\n{'index':<40} {'build s':>8} {'search s':>9} {'B/vector':>9} {'1-R@10':>7} {'10-R@10':>8}")
    for r in rows:
        print(f"{r['index']:<40} {r['build_s']:>8.2f} {r['search_s']:>9.3f} {r['bytes_per_vector']:>9} "
              f"{r['recall1@10']:>7.3f} {r['recall10@10']:>8.3f}")
    if args.json:
        text = json.dumps({"gallery": what, "queries": len(queries), "rows": rows}, indent=1)
        sys.stdout.write(text + "\n") if args.json == "-" else open(args.json, "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
