"""The pre-activation ResNet (shapes as torchvision's resnet101, knobs, weights from a local
file), the classifier, and a trained ML-Images model used as another recipe's image backbone."""

import pytest
import torch
from fusedembed_mlimages.resnet import DEPTHS, PreActResNet
from safetensors.torch import save_file

SMALL = {"name": "mlimages/preact_resnet101", "blocks": [1, 1, 1, 1], "width": 4}


def test_conv_weights_have_torchvision_resnet101_names_and_shapes():
    import torchvision

    with torch.device("meta"):
        ours = PreActResNet(depth=101).state_dict()
        theirs = torchvision.models.resnet101(weights=None).state_dict()
    convs = {k: v.shape for k, v in theirs.items() if v.dim() == 4}
    assert {k: v.shape for k, v in ours.items() if v.dim() == 4} == convs and len(convs) == 104
    # the pre-activation BNs sit before each conv: bn1 sees the unit's input (256 ch in stage 1)
    assert ours["layer1.1.bn1.weight"].shape == (256,) and ours["layer1.0.shortcut_bn.weight"].shape == (64,)
    assert ours["final_bn.weight"].shape == (2048,)


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_depth_knob_gives_the_released_unit_counts(depth):
    with torch.device("meta"):
        net = PreActResNet(depth=depth)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == DEPTHS[depth] and net.out_dim == 2048


def test_every_stage_halves_the_map_and_the_stem_has_no_pooling():
    net = PreActResNet(blocks=[1, 1, 1, 1], width=4).eval()
    sizes = []
    hooks = [getattr(net, f"layer{i}").register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for i in range(1, 5)]
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 128)
    for h in hooks:
        h.remove()
    assert sizes == [16, 8, 4, 2]                 # 64 -> 32 (stem) -> 16, 8, 4, 2
    assert net.layer1[0].conv2.stride == (2, 2) and net.layer1[0].conv1.stride == (1, 1)


def test_bn_knobs_and_init():
    released = PreActResNet(blocks=[1, 1, 1, 1], width=4)
    paper = PreActResNet(blocks=[1, 1, 1, 1], width=4, bn_decay=0.9, bn_eps=1e-3)
    assert released.final_bn.momentum == pytest.approx(0.003) and released.final_bn.eps == 1e-5
    assert paper.final_bn.momentum == pytest.approx(0.1) and paper.final_bn.eps == 1e-3
    w = PreActResNet(blocks=[1, 1, 1, 1], width=16).layer4[0].conv2.weight        # fan_in 128 * 9
    std = (1 / w[0].numel()) ** 0.5
    assert w.abs().max() <= 2 * std / 0.8796 + 1e-7 and w.std().item() == pytest.approx(std, rel=0.05)
    for bad, message in [(dict(depth=34), "depth must be one of 50, 101, 152"),
                         (dict(blocks=[1, 1]), "blocks must be 4 ints"), (dict(bn_decay=1.0), "bn_decay"),
                         (dict(input_range="bgr"), "input_range must be one of")]:
        with pytest.raises(ValueError, match=message):
            PreActResNet(**bad)


def test_input_ranges_all_reach_the_same_features():
    torch.manual_seed(0)
    nets = {r: PreActResNet(blocks=[1, 1, 1, 1], width=4, input_range=r).eval() for r in
            ("minus_one_to_one", "unit", "imagenet")}
    for n in nets.values():
        n.load_state_dict(nets["minus_one_to_one"].state_dict())
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        ref = nets["minus_one_to_one"](x * 2 - 1)
        torch.testing.assert_close(nets["unit"](x), ref)
        torch.testing.assert_close(nets["imagenet"]((x - mean) / std), ref, atol=1e-5, rtol=1e-4)


def test_weights_load_from_a_local_file_and_mismatches_are_named(registries, tmp_path):
    model = registries.build("model", {"name": "classifier", "num_classes": 5, "backbone": SMALL})
    out = model({"image": torch.rand(2, 3, 32, 32)})
    assert out["logits"].shape == (2, 5) and out["features"].shape == (2, 128)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2))
    # an exported model (backbone.* + fc.*): whole model, or the trunk alone for a new head
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    again = registries.build("model", {"name": "classifier", "num_classes": 5, "backbone": SMALL,
                                       "pretrained_path": str(tmp_path / "model.safetensors")})
    torch.testing.assert_close(again.state_dict()["fc.weight"], model.state_dict()["fc.weight"])
    trunk = registries.build("backbone", {**SMALL, "pretrained_path": str(tmp_path / "model.safetensors")})
    torch.testing.assert_close(trunk.state_dict()["layer4.0.conv3.weight"],
                               model.backbone.state_dict()["layer4.0.conv3.weight"])
    with pytest.raises(ValueError, match=r"does not match this preact_resnet \(blocks=\[1, 2, 1, 1\], width=4\): "
                                         r"missing \['layer2.1"):
        registries.build("backbone", {**SMALL, "blocks": [1, 2, 1, 1],
                                      "pretrained_path": str(tmp_path / "model.safetensors")})
    with pytest.raises(ValueError, match=r"does not match the classifier \(7 classes\): shape .*fc.weight \(5, 128\)"):
        registries.build("model", {"name": "classifier", "num_classes": 7, "backbone": SMALL,
                                   "pretrained_path": str(tmp_path / "model.safetensors")})
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        registries.build("backbone", {**SMALL, "pretrained_path": str(tmp_path / "nope.safetensors")})


def test_a_trained_model_is_the_image_backbone_of_a_dual_path_recipe(registries, tiny_scenes, tmp_path):
    pytest.importorskip("fusedembed_dualpath")
    from fusedembed import load_recipe
    from fusedembed.trainer import train

    ml = load_recipe("mlimages/scenes", tiny_scenes("mlimages/scenes", "trainer.max_steps=2", "data.val=null",
                                                   "evaluators=[]"))
    train(ml, tmp_path / "ml", out=lambda _: None)
    trained = torch.load(tmp_path / "ml" / "last.pt", weights_only=True)["model"]
    backbone = {**ml.model["backbone"], "pretrained_path": str(tmp_path / "ml" / "last.pt"), "input_range": "imagenet"}
    dual = registries.build("model", {"name": "dualpath/dualpath", "dim": 16, "max_len": 8,
                                      "image_backbone": backbone,
                                      "text_backbone": {"name": "dualpath/textcnn", "vocab_size": 30, "max_len": 8,
                                                        "word_dim": 8, "widths": [8, 16], "first_mids": None, "blocks": [1, 1],
                                                        "strides": [1, 2], "fc_dim": 16}})
    loaded = dict(dual.named_parameters())
    name = next(k for k in loaded if k.endswith("backbone.layer3.0.conv2.weight"))
    torch.testing.assert_close(loaded[name], trained["backbone.layer3.0.conv2.weight"])
