import pytest
import torch
from fusedembed_alignment.model import BRNN, AlignmentModel
from fusedembed_alignment.score import RankingLoss, alignment_scores

from fusedembed.testing import cpu_and_cuda


def brute_scores(regions, words, num_regions, lengths):
    K, L = len(regions), len(words)
    S = torch.zeros(K, L, dtype=regions.dtype)
    for k in range(K):
        for j in range(L):
            total = 0.0
            for t in range(int(lengths[j])):
                dots = [regions[k, i] @ words[j, t] for i in range(int(num_regions[k]))]
                if dots:
                    total = total + max(dots)
            S[k, j] = total
    return S


def brute_loss(S, margin=1.0):
    B = len(S)
    total = 0.0
    for k in range(B):
        for j in range(B):
            if j != k:
                total = total + (S[k, j] - S[k, k] + margin).clamp(min=0) + (S[j, k] - S[k, k] + margin).clamp(min=0)
    return total


def _inputs(K=4, L=5, M=4, T=6, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(K, M, D, generator=g, dtype=torch.float64, requires_grad=True)
    words = torch.randn(L, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    num_regions = torch.tensor([4, 1, 3, 2][:K])
    lengths = torch.tensor([6, 1, 3, 4, 2][:L])
    return regions, words, num_regions, lengths


@pytest.mark.parametrize("max_elements", [1, 50, 1 << 20])   # one image per block .. all at once
def test_scores_match_brute_force_values_and_gradients(max_elements):
    regions, words, nr, ln = _inputs()
    S = alignment_scores(regions, words, nr, ln, max_elements=max_elements)
    ref = brute_scores(regions, words, nr, ln)
    torch.testing.assert_close(S, ref)
    w = torch.randn(S.shape, dtype=torch.float64)
    g1 = torch.autograd.grad((S * w).sum(), (regions, words))
    g2 = torch.autograd.grad((ref * w).sum(), (regions, words))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_padding_words_and_missing_regions_change_nothing():
    regions, words, nr, ln = _inputs()
    S = alignment_scores(regions, words, nr, ln)
    r2, w2 = regions.detach().clone(), words.detach().clone()
    for k, n in enumerate(nr):
        r2[k, n:] = 1e3          # huge but masked: never the max
    for j, n in enumerate(ln):
        w2[j, n:] = -1e3
    torch.testing.assert_close(alignment_scores(r2, w2, nr, ln), S.detach())
    g = torch.autograd.grad(S.sum(), (regions, words))
    for k, n in enumerate(nr):
        assert (g[0][k, n:] == 0).all()
    for j, n in enumerate(ln):
        assert (g[1][j, n:] == 0).all()


def test_gradient_goes_to_the_argmax_region_only():
    regions = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]], requires_grad=True)
    words = torch.tensor([[[2.0, 1.0]]])
    S = alignment_scores(regions, words)
    S.sum().backward()
    assert S.item() == 2.0
    torch.testing.assert_close(regions.grad, torch.tensor([[[2.0, 1.0], [0.0, 0.0]]]))


def test_scores_refuse_bad_counts():
    regions, words, nr, ln = _inputs()
    with pytest.raises(ValueError, match=r"num_regions must be in \[0, 4\], got 5"):
        alignment_scores(regions, words, torch.tensor([5, 1, 1, 1]), ln)
    with pytest.raises(ValueError, match="lengths must have 5 entries, got 2"):
        alignment_scores(regions, words, nr, ln[:2])


def test_ranking_loss_matches_brute_force():
    regions, words, nr, ln = _inputs(K=4, L=4)
    ln = ln[:4]
    loss = RankingLoss()(regions, words, nr, ln)
    ref = brute_loss(brute_scores(regions, words, nr, ln))
    torch.testing.assert_close(loss, ref)
    g1 = torch.autograd.grad(loss, (regions, words))
    g2 = torch.autograd.grad(ref, (regions, words))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_ranking_loss_zero_when_ranked_by_the_margin_and_skips_same_image():
    # Image k's regions point at word k's direction only: S = 3 * identity.
    regions = torch.eye(3)[:, None, :] * 3
    words = torch.eye(3)[:, None, :]
    assert RankingLoss()(regions, words, torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long)) == 0
    # Items 0 and 1 are one image with two captions: not negatives of each other.
    regions = torch.stack([torch.eye(3)[0], torch.eye(3)[0], torch.eye(3)[2]])[:, None] * 3
    words = regions / 3
    loss = RankingLoss()(regions, words, torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long),
                         instance=torch.tensor([0, 0, 1]))
    assert loss == 0
    assert RankingLoss()(regions, words, torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long)) > 0


def test_brnn_shapes_and_direction():
    torch.manual_seed(0)
    brnn = BRNN(vocab_size=10, hidden=8, word_dim=5, dropout=0.0).eval()
    tokens = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    lengths = torch.tensor([4, 2])
    out = brnn(tokens, lengths)
    assert out.shape == (2, 4, 8)
    # The padded sentence equals the same sentence alone, unpadded: the backward RNN starts at
    # its last word, not at the padding.
    torch.testing.assert_close(out[1, :2], brnn(tokens[1:, :2], lengths[1:])[0])
    # Changing the last word changes the first word's vector (backward pass) and changing the
    # first word changes the last's (forward pass).
    t2 = tokens.clone()
    t2[0, 3] = 9
    assert not torch.allclose(brnn(t2, lengths)[0, 0], out[0, 0])
    t3 = tokens.clone()
    t3[0, 0] = 9
    assert not torch.allclose(brnn(t3, lengths)[0, 3], out[0, 3])


def test_fixed_word_vectors(tmp_path):
    from fusedembed.data import Vocab

    vocab = Vocab(["<pad>", "<unk>", "red", "circle"])
    vocab.save(tmp_path / "vocab.txt")
    (tmp_path / "w2v.txt").write_text("2 3\nred 1 2 3\nCircle 4 5 6\n")
    model = AlignmentModel({"name": "tiny_cnn", "width": 4, "depth": 2}, vocab_size=4, hidden=6,
                           word_dim=3, word2vec_path=str(tmp_path / "w2v.txt"),
                           vocab_path=str(tmp_path / "vocab.txt"))
    w = model.brnn.embed.weight
    assert not w.requires_grad
    torch.testing.assert_close(w[2], torch.tensor([1.0, 2.0, 3.0]))
    assert (w[0] == 0).all()
    torch.testing.assert_close(w[3], torch.tensor([4.0, 5.0, 6.0]))   # "Circle" serves "circle"
    with pytest.raises(ValueError, match="dim is 4 but .* has 3-d vectors"):
        AlignmentModel({"name": "tiny_cnn"}, word_dim=4, word2vec_path=str(tmp_path / "w2v.txt"),
                       vocab_path=str(tmp_path / "vocab.txt"))
    with pytest.raises(ValueError, match="vocab_size is 5 but .* holds 4 words"):
        AlignmentModel({"name": "tiny_cnn"}, vocab_size=5, word_dim=3, word2vec_path=str(tmp_path / "w2v.txt"),
                       vocab_path=str(tmp_path / "vocab.txt"))


@pytest.mark.parametrize("mode", ["crop", "roi"])
def test_model_regions(mode):
    torch.manual_seed(0)
    model = AlignmentModel({"name": "tiny_cnn", "width": 4, "depth": 2}, vocab_size=12, hidden=6,
                           region_mode=mode, max_boxes=3, crop_size=16).eval()
    batch = {"image": torch.rand(2, 3, 32, 32),
             "boxes": torch.tensor([[[0, 0, 16, 16], [8, 8, 30, 30], [1, 1, 5, 5], [2, 2, 9, 9]],
                                    [[4, 4, 20, 20], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]]).float(),
             "num_objects": torch.tensor([4, 1]),
             "tokens": torch.tensor([[2, 3, 4], [5, 0, 0]]), "lengths": torch.tensor([3, 1])}
    out = model(batch)
    assert out["regions"].shape == (2, 4, 6)
    assert out["num_regions"].tolist() == [4, 2]      # whole image + at most max_boxes = 3
    assert (out["regions"][1, 2:] == 0).all()
    assert out["words"].shape == (2, 3, 6)
    # A region depends on its box: moving box 1 of image 0 changes that region only.
    batch["boxes"][0, 1] = torch.tensor([0.0, 16, 16, 32])
    moved = model(batch)["regions"]
    assert not torch.allclose(moved[0, 2], out["regions"][0, 2])
    torch.testing.assert_close(moved[0, [0, 1, 3]], out["regions"][0, [0, 1, 3]])


def test_every_parameter_takes_part():
    # DDP (without find_unused_parameters) needs a gradient for every parameter.
    torch.manual_seed(0)
    batch = {"image": torch.rand(2, 3, 32, 32), "boxes": torch.tensor([[[0, 0, 16, 16]], [[4, 4, 20, 20]]]).float(),
             "num_objects": torch.tensor([1, 1]), "tokens": torch.tensor([[2, 3], [4, 0]]), "lengths": torch.tensor([2, 1])}
    for mode, recurrent in (("roi", True), ("crop", True), ("roi", False)):
        model = AlignmentModel({"name": "tiny_cnn", "width": 4, "depth": 2}, vocab_size=6, hidden=5, word_dim=3,
                               region_mode=mode, crop_size=16, recurrent=recurrent)
        out = model(batch)
        RankingLoss(margin=100.0)(out["regions"], out["words"], out["num_regions"], out["lengths"]).backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, (mode, recurrent, unused)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_scores_on_the_device_match_the_cpu(device):
    regions, words, nr, ln = _inputs(D=8)
    ref = alignment_scores(regions.detach(), words.detach(), nr, ln)
    got = alignment_scores(regions.detach().to(device), words.detach().to(device), nr.to(device), ln.to(device),
                           max_elements=100)
    torch.testing.assert_close(got.cpu(), ref)
