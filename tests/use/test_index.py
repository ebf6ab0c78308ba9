import pytest
import torch
import torch.nn.functional as F

from fusedembed.index import ExactIndex, build_index, score_blocks
from fusedembed.testing import cpu_and_cuda


def unit(n, d, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def clustered(n, d, clusters, seed=0, spread=0.3):
    """Unit vectors around ``clusters`` centres: structure for IVF to exploit, as real
    embeddings have."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=g), dim=1)
    x = centres[torch.randint(clusters, (n,), generator=g)] + spread / d ** 0.5 * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("block,resident", [(1 << 22, True), (1000, True), (300, False), (50, False)])
def test_exact_index_equals_brute_force_for_any_block(device, block, resident):
    g, q = unit(1000, 16), unit(37, 16, seed=1)
    ref = (q @ g.T).topk(7, dim=1)
    index = ExactIndex(g.numpy() if not resident else g, device=device, block=block, resident=resident)
    scores, found = index.search(q, 7)
    assert found.device.type == "cpu" and scores.dtype == torch.float32 and found.dtype == torch.int64
    assert torch.equal(found, ref.indices)
    torch.testing.assert_close(scores, ref.values, atol=1e-6, rtol=0)


def test_exact_index_streams_a_gallery_it_reads_by_blocks():
    g = unit(500, 8)

    class Rows:                     # like an EmbeddingFile: shape and row slices only
        shape = tuple(g.shape)
        reads = []

        def __getitem__(self, rows):
            self.reads.append((rows.start, rows.stop))
            return g[rows].half()

    index = ExactIndex(Rows(), block=64 * 8)            # 64 rows of 8 floats per read
    scores, found = index.search(unit(3, 8, 2), 5)
    assert len(Rows.reads) == 8 and max(b - a for a, b in Rows.reads) <= 64
    assert torch.equal(found, (unit(3, 8, 2) @ g.half().float().T).topk(5).indices)


def test_ties_are_ordered_by_gallery_index_and_k_is_capped():
    g = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [1.0, 0]])
    scores, found = ExactIndex(g, block=2).search(torch.tensor([[1.0, 0]]), 10)
    assert found.tolist() == [[0, 2, 3, 1]] and scores.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_bad_input_is_refused_with_the_argument_named():
    index = ExactIndex(unit(10, 4))
    for q, k, message in ((unit(2, 3), 1, "queries have dim 3, the gallery 4"),
                          (unit(2, 4), 0, "k must be an integer >= 1"),
                          (torch.full((1, 4), float("nan")), 1, "queries contains NaN"),
                          (torch.ones(4), 1, "queries must be 2-D")):
        with pytest.raises(ValueError, match=message):
            index.search(q, k)
    with pytest.raises(ValueError, match="index kind must be one of exact, flat, ivfpq"):
        build_index(unit(3, 4), "hnsw")


def test_score_blocks_cover_every_row_within_the_block_size():
    q, g = unit(10, 4), unit(7, 4)
    blocks = list(score_blocks(q, g, block=21))
    assert [a for a, _ in blocks] == [0, 3, 6, 9] and all(s.numel() <= 21 for _, s in blocks)
    torch.testing.assert_close(torch.cat([s for _, s in blocks]), q @ g.T)


def test_faiss_flat_equals_exact():
    pytest.importorskip("faiss")
    g, q = unit(2000, 32), unit(50, 32, seed=3)
    exact = build_index(g, "exact").search(q, 10)
    flat = build_index(g, "flat").search(q, 10)
    assert torch.equal(flat[1], exact[1])
    torch.testing.assert_close(flat[0], exact[0], atol=1e-5, rtol=0)


@pytest.fixture
def faiss_one_thread():
    """FAISS on one OpenMP thread: on a shared 2-core machine its spinning threads, not the
    work, would set the test's time."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield faiss
    faiss.omp_set_num_threads(before)


def test_faiss_ivfpq_ranks_the_true_neighbour_in_its_top_10(faiss_one_thread):
    g = clustered(8000, 32, 100)
    q = clustered(200, 32, 100, seed=1)
    nearest = build_index(g, "exact").search(q, 1)[1]
    found = build_index(g, "ivfpq", nlist=32, nprobe=8, m=16, nbits=6).search(q, 10)[1]
    recall = (found == nearest).any(1).float().mean().item()
    assert recall > 0.7, recall        # 0.82 measured; approximate (quantised), far from chance (0.001)
    assert found.shape == (200, 10) and (found >= 0).all()
    with pytest.raises(ValueError, match="too few to train"):
        build_index(g[:100], "ivfpq", nlist=64)
