"""timm models as backbones (``timm/<model>``); skipped without timm."""

import socket

import pytest
import torch

from fusedembed import build
from fusedembed.nn import GeM
from fusedembed.registry import UnknownNameError


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: weights come from local files only."""
    def refuse(*args, **kwargs):
        raise AssertionError("a timm backbone tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_the_family_is_listed_once():
    import io

    from fusedembed.cli import main

    out = io.StringIO()
    assert main(["list", "backbones", "timm/*"], out=out) == 0
    rows = out.getvalue().splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[:2] == ["timm/*", "timm"] and "any timm model" in rows[0]


def test_timm_models_build_with_the_recipes_pooling(registries, no_network):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    avg = build("backbone", "timm/test_convnext")
    gem = build("backbone", {"name": "timm/test_convnext", "pool": "gem", "gem_p": 3.0})
    own = build("backbone", {"name": "timm/test_vit", "pool": "model", "model_args": {"img_size": 32}})
    assert (avg.out_dim, gem.out_dim, own.out_dim) == (64, 64, 64)
    assert avg(x).shape == gem(x).shape == own(x).shape == (2, 64)
    assert any(isinstance(m, GeM) for m in gem.modules()) and not any(isinstance(m, GeM) for m in avg.modules())
    assert isinstance(own.trunk, timm.models.VisionTransformer)


def test_weights_come_from_pretrained_path_only(registries, no_network, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("test_convnext").eval()        # a full model, classifier included
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    loaded = build("backbone", {"name": "timm/test_convnext", "pretrained_path": str(tmp_path / "w.safetensors")})
    fresh = build("backbone", "timm/test_convnext")
    with torch.no_grad():
        expected = source.forward_features(x).mean((2, 3))
        assert torch.allclose(loaded.eval()(x), expected, atol=1e-5)
        assert not torch.allclose(fresh.eval()(x), expected, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="pretrained_path '.*missing.pth' is not a file"):
        build("backbone", {"name": "timm/test_convnext", "pretrained_path": str(tmp_path / "missing.pth")})


def test_unknown_models_and_a_missing_timm_are_named(registries, monkeypatch):
    pytest.importorskip("timm")
    with pytest.raises(UnknownNameError, match="has no model 'convnxt_tiny' \\(did you mean 'convnext_tiny'\\?\\)"):
        build("backbone", "timm/convnxt_tiny")
    from fusedembed import timm_backbones
    monkeypatch.setattr(timm_backbones, "_installed", lambda: False)
    with pytest.raises(LookupError, match=r"timm is not installed \(pip install 'fusedembed\[timm\]'\)"):
        timm_backbones.resolve("resnet18")


def test_a_timm_backbone_trains_a_step(registries, scenes_root, tmp_path, no_network):
    pytest.importorskip("timm")
    from fusedembed.config import validate
    from fusedembed.trainer import train

    scenes = {"name": "scenes", "root": scenes_root, "num_images": 16, "image_size": 32, "view": "image",
              "progress": False, "workers": 1}

    def one_step(lr, run_dir):
        recipe = validate({
            "model": {"name": "image_embedding", "embed_dim": 8, "num_classes": 16,
                      "backbone": {"name": "timm/test_convnext", "pool": "gem"}},
            "losses": [{"name": "cross_entropy", "inputs": {"label": "instance"}}],
            "data": {"train": scenes},
            "trainer": {"max_steps": 1, "batch_size": 8, "lr": lr, "log_every": 1},
        }, check=True)
        train(recipe, run_dir, out=lambda _: None)
        state = torch.load(run_dir / "last.pt", weights_only=True)
        assert state["global_step"] == 1
        return state["model"]

    still, moved = one_step(0.0, tmp_path / "lr0"), one_step(0.5, tmp_path / "lr05")
    trunk = [k for k in still if k.startswith("backbone.trunk.") and k.endswith(".weight")]
    assert trunk and any(not torch.equal(still[k], moved[k]) for k in trunk)   # the step reached timm's weights
