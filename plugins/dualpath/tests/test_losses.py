"""Instance loss (chunked CE, shared classifier) and the bidirectional ranking loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from fusedembed_dualpath.losses import chunked_cross_entropy
from fusedembed_dualpath.memory import analytic, measure


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_cross_entropy_equals_plain_values_and_gradients(chunk):
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 6, 3, 3, 1, 5])
    g = torch.rand(6, dtype=torch.float64)
    ours = chunked_cross_entropy(x, w, y, b, chunk=chunk)
    ref = F.cross_entropy(x @ w.T + b, y, reduction="none")
    torch.testing.assert_close(ours, ref)
    grads = torch.autograd.grad((ours * g).sum(), (x, w, b))
    ref_grads = torch.autograd.grad((ref * g).sum(), (x, w, b))
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)
    if chunk == 3:
        assert torch.autograd.gradcheck(lambda x, w: chunked_cross_entropy(x, w, y, chunk=chunk), (x, w))


def test_chunked_cross_entropy_is_stable_for_huge_logits():
    x = torch.tensor([[1000.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    loss = chunked_cross_entropy(x, w, torch.tensor([1]), chunk=1)
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(1000.0)


def test_chunked_loss_keeps_no_batch_by_class_tensor_for_backward():
    n, c, d = 8, 5000, 4
    x = torch.randn(n, d, requires_grad=True)
    w = torch.randn(c, d, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        chunked_cross_entropy(x, w, torch.randint(c, (n,)), chunk=256).sum()
        plain = len(saved)
        F.cross_entropy(x @ w.T, torch.randint(c, (n,)))
    ours, theirs = saved[:plain], saved[plain:]
    assert max(ours) == c * d and n * c not in ours          # W itself (a parameter), never logits
    assert n * c in theirs                                   # what plain CE keeps


def test_peak_memory_is_bounded_by_the_chunk_and_matches_the_analysis():
    # Small scale of the documented B=128, C=113,287, D=2048 figure: the same code path.
    b, c, d = 128, 40000, 64
    plain, chunked = measure(b, c, d, 0), measure(b, c, d, 1024)
    assert chunked["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    assert chunked["peak_bytes"] < 0.5 * plain["peak_bytes"]
    assert chunked["peak_bytes"] < 1.5 * analytic(b, c, d, 1024)


def test_instance_loss_is_one_classifier_on_both_branches(registries):
    loss = registries.build("loss", {"name": "instance", "num_classes": 3, "dim": 2, "text_weight": 0.5})
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    img, txt = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    label = torch.tensor([0])
    # logits image (2, 0, 2), text (0, 1, 1); both against class 0
    ce_img = math.log(math.exp(2) + 1 + math.exp(2)) - 2
    ce_txt = math.log(1 + math.e + math.e)
    assert loss(label, img, txt).item() == pytest.approx(ce_img + 0.5 * ce_txt, rel=1e-6)
    assert loss(label, image_features=img).item() == pytest.approx(ce_img, rel=1e-6)
    assert loss.bias is None and set(loss.state_dict()) == {"weight"}


def test_instance_loss_sum_reduction_adds_up_the_batch(registries):
    torch.manual_seed(0)
    summed = registries.build("loss", {"name": "instance", "num_classes": 10, "dim": 4, "bias": True})
    mean = registries.build("loss", {"name": "instance", "num_classes": 10, "dim": 4, "bias": True, "reduction": "mean"})
    mean.load_state_dict(summed.state_dict())
    f, g, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(10, (6,))
    assert summed(y, f, g).item() == pytest.approx(6 * mean(y, f, g).item(), rel=1e-5)
    ref = F.cross_entropy(summed.logits(f), y, reduction="sum") + F.cross_entropy(summed.logits(g), y, reduction="sum")
    assert summed(y, f, g).item() == pytest.approx(ref.item(), rel=1e-5)


def test_instance_loss_errors_name_the_argument(registries):
    with pytest.raises(ValueError, match="instance: num_classes must be > 0, got 0"):
        registries.build("loss", {"name": "instance", "num_classes": 0})
    loss = registries.build("loss", {"name": "instance", "num_classes": 4, "dim": 2})
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\) .* max 4"):
        loss(torch.tensor([4]), torch.randn(1, 2))
    with pytest.raises(ValueError, match="needs image_features or text_features"):
        loss(torch.tensor([1]))


def _pair():
    # Two images and two captions; s(x_i, y_j) below.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = F.normalize(torch.tensor([[1.0, 0.2], [0.6, 0.8]]), dim=1)
    return img, txt, img @ txt.T


def test_ranking_loss_hardest_and_sum_match_hand_computation(registries):
    img, txt, s = _pair()
    m = 0.5
    hand = sum(max(0, m - s[i, i] + s[i, 1 - i]) + max(0, m - s[i, i] + s[1 - i, i]) for i in range(2))
    for negatives in ("hardest", "sum"):          # one negative each: both agree
        loss = registries.build("loss", {"name": "bidir_ranking", "margin": m, "negatives": negatives, "dim": 2})
        assert loss(img, txt).item() == pytest.approx(float(hand), rel=1e-6)
    three_img = torch.cat([img, F.normalize(torch.tensor([[1.0, 1.0]]), dim=1)])
    three_txt = torch.cat([txt, F.normalize(torch.tensor([[1.0, 0.9]]), dim=1)])
    s3 = three_img @ three_txt.T
    hardest = registries.build("loss", {"name": "bidir_ranking", "margin": m, "negatives": "hardest", "dim": 2})
    summed = registries.build("loss", {"name": "bidir_ranking", "margin": m, "negatives": "sum", "dim": 2})
    hinge = (m - s3.diag()[:, None] + s3).clamp(min=0).fill_diagonal_(0)
    hinge_img = (m - s3.diag()[None] + s3).clamp(min=0).fill_diagonal_(0)
    assert hardest(three_img, three_txt).item() == pytest.approx(float(hinge.max(1).values.sum()
                                                                       + hinge_img.max(0).values.sum()), rel=1e-6)
    assert summed(three_img, three_txt).item() == pytest.approx(float(hinge.sum() + hinge_img.sum()), rel=1e-6)


def test_ranking_loss_never_uses_the_same_instance_as_a_negative(registries):
    img, txt, _ = _pair()
    loss = registries.build("loss", {"name": "bidir_ranking", "margin": 0.5, "dim": 2})
    assert loss(img, txt, torch.tensor([7, 7])).item() == 0.0     # two captions of one image


def test_candidate_negatives_come_from_a_bank_without_grad(registries):
    loss = registries.build("loss", {"name": "bidir_ranking", "margin": 1.0, "negatives": "candidates",
                               "num_candidates": 4, "dim": 2})
    img, txt, _ = _pair()
    first = loss(img, txt, torch.tensor([0, 1]))
    assert loss.bank_instance.tolist() == [0, 1, -1, -1] and int(loss.bank_next) == 2
    # A new batch whose hardest negative is a banked caption: it counts, and gets no gradient.
    q = torch.tensor([[0.0, 1.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0]], requires_grad=True)
    value = loss(q, y, torch.tensor([5]))
    # s(q, y) = 0, hardest banked caption for q is caption 1 (s = 0.8); for y, image 0 (s = 1)
    assert value.item() == pytest.approx((1 - 0 + 0.8) + (1 - 0 + 1.0), rel=1e-5)
    value.backward()
    # Only the new pair learns: d/dq = -2y + caption 1, d/dy = -2q + image 0.
    torch.testing.assert_close(q.grad, -2 * y.detach() + txt[1:2])
    torch.testing.assert_close(y.grad, -2 * q.detach() + img[0:1])
    assert not loss.bank_text.requires_grad and first.item() > 0
    assert loss.bank_instance.tolist() == [0, 1, 5, -1]


def test_random_negatives_are_one_in_batch_item_of_another_instance(registries):
    # Items 0 and 1 are one person: item 0's only possible negative is item 2, so its hinges are exact.
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    txt = F.normalize(torch.tensor([[1.0, 0.2], [0.8, 0.2], [0.3, 1.0]]), dim=1)
    ids = torch.tensor([4, 4, 9])
    s = img @ txt.T
    loss = registries.build("loss", {"name": "bidir_ranking", "margin": 1.0, "negatives": "random", "dim": 2,
                                     "reduction": "mean"})
    values = {round(loss(img, txt, ids).item(), 6) for _ in range(40)}
    anchor0 = (1 - s[0, 0] + s[0, 2]) + (1 - s[0, 0] + s[2, 0])
    anchor2 = [(1 - s[2, 2] + s[2, a]) + (1 - s[2, 2] + s[b, 2]) for a in (0, 1) for b in (0, 1)]
    anchor1 = (1 - s[1, 1] + s[1, 2]) + (1 - s[1, 1] + s[2, 1])
    expected = {round(float(anchor0 + anchor1 + x) / 3, 6) for x in anchor2}
    assert values <= expected and len(values) > 1            # random, never the same person
    with pytest.raises(ValueError, match="'random' needs two instances in the batch, got one"):
        loss(img, txt, torch.tensor([1, 1, 1]))


def test_inbatch_instance_is_layumi_pytorch_formula(registries):
    loss = registries.build("loss", {"name": "dualpath/inbatch_instance", "gamma": 10.0, "text_weight": 0.5})
    img, txt = torch.randn(5, 3), torch.randn(5, 3)

    def hand(f):
        f = F.normalize(f, dim=1)
        logits = 10.0 * f @ f.T
        return -(logits.diag() - logits.logsumexp(1)).mean()

    assert loss(img, txt).item() == pytest.approx(float(hand(img) + 0.5 * hand(txt)), rel=1e-5)
    assert loss(image_features=img).item() == pytest.approx(float(hand(img)), rel=1e-5)
    with pytest.raises(ValueError, match="gamma must be > 0, got 0"):
        registries.build("loss", {"name": "dualpath/inbatch_instance", "gamma": 0})


def test_ranking_loss_errors_name_the_argument(registries):
    with pytest.raises(ValueError, match="negatives must be one of .* got 'all'"):
        registries.build("loss", {"name": "bidir_ranking", "negatives": "all"})
    with pytest.raises(ValueError, match="margin must be >= 0, got -1"):
        registries.build("loss", {"name": "bidir_ranking", "margin": -1})
