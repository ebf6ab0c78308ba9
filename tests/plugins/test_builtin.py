import pytest
import torch

from fusedembed.nn import GeM


def test_resnet_loads_a_local_torchvision_checkpoint_and_pools_with_gem(registries, tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    net = registries.build("backbone", {"name": "resnet18", "pretrained_path": str(path)}).eval()
    assert net.out_dim == 512
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.flatten(reference.avgpool(reference.layer4(reference.layer3(reference.layer2(
            reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))), 1)
        torch.testing.assert_close(net(x), expected)

    gem = registries.build("backbone", {"name": "resnet18", "pretrained_path": str(path), "pool": "gem",
                                  "gem_p": 2.0})
    assert isinstance(gem.avgpool, GeM) and gem.avgpool.p.item() == pytest.approx(2.0)
    assert gem(x).shape == (2, 512)


def test_resnet_checkpoint_errors(registries, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file .*never downloaded"):
        registries.build("backbone", {"name": "resnet18", "pretrained_path": str(tmp_path / "none.pth")})
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra.bias": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=r"does not match ResNet: missing \['bn1.weight'.*; unexpected \['extra.bias'\]; shape \(file vs model\) \[.conv1.weight \(1,\) vs \(64, 3, 7, 7\).\]"):
        registries.build("backbone", {"name": "resnet18", "pretrained_path": str(wrong)})
    with pytest.raises(ValueError, match="pool must be one of avg, gem, got 'max'"):
        registries.build("backbone", {"name": "tiny_cnn", "pool": "max"})


def test_image_embedding_model_and_losses(registries):
    model = registries.build("model", {"name": "image_embedding", "backbone": {"name": "tiny_cnn", "width": 4},
                                 "embed_dim": 6, "num_classes": 3})
    out = model({"image": torch.rand(5, 3, 16, 16)})
    assert out["features"].shape == (5, 16) and out["logits"].shape == (5, 3)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(5))
    label = torch.tensor([0, 1, 2, 0, 1])
    ce = registries.build("loss", {"name": "cross_entropy", "label_smoothing": 0.1})
    torch.testing.assert_close(ce(out["logits"], label),
                               torch.nn.functional.cross_entropy(out["logits"], label, label_smoothing=0.1))
    bce = registries.build("loss", {"name": "bce", "pos_weight": 2.0})
    logits, labels = torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 0]])
    expected = (2 * torch.log1p(torch.exp(torch.tensor(0.0))) + torch.log1p(torch.exp(torch.tensor(1.0)))) / 2
    torch.testing.assert_close(bce(logits, labels), expected)
