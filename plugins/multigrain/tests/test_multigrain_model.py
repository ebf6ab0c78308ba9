"""The MultiGrain model: outputs, the whitening integrated with the classifier kept, p*."""

import pytest
import torch
from fusedembed_multigrain.finetune_p import cross_validate_p, finetune_p, select_per_class
from fusedembed_multigrain.model import MultiGrain, add_bias_channel, l2n
from fusedembed_multigrain.whiten import fit_whitening, whiten_model


def _model(**kw):
    torch.manual_seed(0)
    m = MultiGrain(num_classes=5, arch="tiny", width=4, depth=2, **kw)
    return m.eval()


def _images(n=6, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_outputs_classifier_reads_the_unnormalised_gem():
    m = _model()
    x = _images()
    out = m({"image": x})
    g = m.pool(m.trunk(x))
    torch.testing.assert_close(out["gem"], g)
    torch.testing.assert_close(out["logits"], m.classifier(g))
    torch.testing.assert_close(out["embedding"], g / (g.norm(dim=1, keepdim=True) + 1e-6))
    assert not m.pool.learn_p and float(m.pool.p) == 3.0       # p fixed by default


def test_add_bias_appends_a_constant_channel():
    m = _model(add_bias=True)
    out = m({"image": _images()})
    assert out["gem"].shape[1] == m.trunk.out_dim + 1 and (out["gem"][:, -1] == 1).all()


@pytest.mark.parametrize("add_bias", [False, True])
@pytest.mark.parametrize("include_last", [True, False])
def test_whitening_integration_keeps_the_argmax(add_bias, include_last):
    m = _model(add_bias=add_bias)
    x = _images(40, seed=1)
    before = m({"image": x})
    g1 = before["gem"] if add_bias else add_bias_channel(before["gem"])
    mean, proj = fit_whitening(l2n(g1), include_last)
    m.integrate_whitening(mean.float(), proj.float())
    after = m({"image": x})
    # logits divided by ||[g; 1]|| + 1e-6: same argmax, same ratios
    scale = (g1.norm(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(after["logits"], before["logits"] / scale, atol=1e-4, rtol=1e-3)
    assert (after["logits"].argmax(1) == before["logits"].argmax(1)).all()
    z = (l2n(g1) - mean.float()) @ proj.float()
    torch.testing.assert_close(after["embedding"], l2n(z), atol=1e-5, rtol=1e-4)
    if not include_last:                       # the constant channel passes through
        torch.testing.assert_close(z[:, -1], l2n(g1)[:, -1])
    # a whitened checkpoint loads into a fresh model
    fresh = _model(add_bias=add_bias)
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh({"image": x})["embedding"], after["embedding"])
    with pytest.raises(RuntimeError, match="already integrated"):
        m.integrate_whitening(mean.float(), proj.float())


def test_fit_whitening_whitens():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) @ torch.tensor(
        [[2.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0.5, 0], [0, 0, 0.3, 0.1]])
    m, P = fit_whitening(x)
    z = (x.double() - m) @ P
    torch.testing.assert_close(z.T @ z / (len(x) - 1), torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)


def test_whiten_model_from_images_of_any_size():
    m = _model()
    images = [torch.rand(3, 12 + i % 3, 16) for i in range(30)]
    whiten_model(m, images, size=16)
    assert m.whitened and m.whiten_proj.shape == (m.trunk.out_dim + 1,) * 2


def test_multi_scale_is_the_gem_mean_over_scales():
    m = _model()
    x = _images(2, 32)
    single = m({"image": x})["gem"]
    m.set_scales((1.0, 0.5))
    half = m.pool(m.trunk(torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear",
                                                          align_corners=False, antialias=True)))
    expected = ((single.clamp_min(1e-6) ** 3 + half.clamp_min(1e-6) ** 3) / 2) ** (1 / 3)
    torch.testing.assert_close(m({"image": x})["gem"], expected)
    with pytest.raises(ValueError, match="scales must be positive"):
        m.set_scales(())


def test_finetune_p_trains_only_p_with_bn_frozen():
    m = _model()
    m.train()
    weights = {k: v.clone() for k, v in m.state_dict().items() if "p_value" not in k}
    images = [torch.rand(3, 16, 12 + i % 4) for i in range(16)]
    labels = [i % 5 for i in range(16)]
    p_star = finetune_p(m, images, labels, size=20, lr=0.5)
    assert p_star != pytest.approx(3.0) and p_star > 0
    for k, v in m.state_dict().items():
        if "p_value" not in k:
            torch.testing.assert_close(v, weights[k], msg=k)   # weights and BN statistics untouched
    assert not m.pool.learn_p and all(q.requires_grad for q in m.parameters())


def test_cross_validated_p_takes_the_best_candidate():
    m = _model()
    images = [torch.rand(3, 16, 16) for _ in range(10)]
    labels = [0] * 10
    best, scores = cross_validate_p(m, images, labels, 16, candidates=(1, 3, 8))
    assert scores[best] == max(scores.values()) and float(m.pool.p) == best


def test_select_per_class():
    assert select_per_class([0, 1, 0, 0, 1, 2], 2) == [0, 1, 2, 4, 5]


def test_accuracy_evaluator_over_batches_ties_and_nan():
    from fusedembed_multigrain.evaluator import Accuracy

    class Fixed(torch.nn.Module):
        def forward(self, batch):
            return {"logits": batch["scores"]}

    batches = [{"scores": torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3]]), "label": torch.tensor([1, 2])},
               {"scores": torch.tensor([[0.2, 0.3, 0.5]]), "label": torch.tensor([2])}]
    assert Accuracy(ks=(1, 2))(Fixed(), batches, device="cpu") == {"top1": pytest.approx(200 / 3), "top2": 100.0}
    # Equal logits scored whatever label topk listed first (1 in 3 here); NaN logits scored too.
    equal = [{"scores": torch.zeros(3, 3), "label": torch.tensor([0, 1, 2])}]
    assert Accuracy(ks=(1,))(Fixed(), equal, device="cpu") == {"top1": 0.0}
    diverged = [{"scores": torch.full((2, 3), float("nan")), "label": torch.tensor([0, 1])}]
    with pytest.raises(ValueError, match=r"scores contain NaN \(row 0 of 2\)"):
        Accuracy(ks=(1,))(Fixed(), diverged, device="cpu")
