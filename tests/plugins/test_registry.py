import sys

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from fusedembed.registry import (
    AmbiguousNameError,
    BuildError,
    DuplicateNameError,
    Registries,
    RegistryError,
    UnknownNameError,
    kind_of,
)


class Toy(nn.Module):
    """Toy backbone."""

    def __init__(self, width: int, depth: int = 2, *, scale: float = 1.0):
        super().__init__()
        self.out_dim, self.depth, self.scale = width, depth, scale


class Split(Dataset):
    def __init__(self, split, size=3):
        self.split, self.size = split, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return {"index": i}


@pytest.fixture
def regs():
    regs = Registries()
    regs["backbone"].add("toy", Toy, plugin="p1")
    regs["backbone"].add("resnet18", Toy, plugin="p1", description="not really")
    regs["dataset"].add("split", Split, plugin="p1")
    return regs


def test_kinds_accept_singular_and_plural():
    assert kind_of("Backbones").name == kind_of("backbone").name == "backbone"
    assert kind_of("losses").hook == "fusedembed_register_losses"
    with pytest.raises(UnknownNameError, match="unknown kind 'widget'; expected one of: backbones"):
        kind_of("widget")


def test_list_with_patterns_and_descriptions(regs):
    backbones = regs["backbones"]
    assert backbones.list() == ["p1/resnet18", "p1/toy"] and list(backbones) == ["p1/resnet18", "p1/toy"]
    assert backbones.list("res*") == ["p1/resnet18"] and backbones.list("?o?") == ["p1/toy"]
    assert backbones.list("p1/t*") == ["p1/toy"] and backbones.list("x*") == []
    assert backbones.names() == ["resnet18", "toy"]        # bare: no other plugin has them
    assert backbones.get("toy").description == "Toy backbone."
    assert backbones.get("p1/resnet18").description == "not really"
    assert backbones.get("toy").origin == f"{__name__}:Toy"


def test_names_are_plugin_slash_name_and_bare_names_resolve_while_unambiguous(regs):
    assert regs["backbone"].get("toy") is regs["backbone"].get("p1/toy") and "toy" in regs["backbone"]
    regs["backbone"].add("toy", lambda width=3: Toy(width), plugin="p2")
    assert "toy" not in regs["backbone"] and regs["backbone"].names("*toy") == ["p1/toy", "p2/toy"]
    with pytest.raises(AmbiguousNameError, match=r"backbone 'toy' is registered by several plugins: "
                       r"name one of 'p1/toy', 'p2/toy'"):
        regs.build("backbone", {"name": "toy", "width": 2})
    assert regs.build("backbone", "p2/toy").out_dim == 3 and regs.build("backbone", "p1/toy", width=5).out_dim == 5
    with pytest.raises(DuplicateNameError, match=r"backbone 'p1/toy' is registered twice: by plugin "
                       r"'p1' \(.*:Toy\) and by plugin 'p1'"):
        regs["backbone"].add("toy", Toy, plugin="p1")
    with pytest.raises(RegistryError, match="the registry adds '<plugin>/'"):
        regs["backbone"].add("p3/toy", Toy, plugin="p3")


def test_build_passes_kwargs_and_checks_them(regs):
    toy = regs.build("backbone", {"name": "toy", "width": 5, "scale": 2})
    assert (toy.out_dim, toy.depth, toy.scale) == (5, 2, 2)
    with pytest.raises(BuildError) as err:
        regs.build("backbone", {"name": "toy", "width": 5, "dpeth": 3, "zzz": 1})
    msg = str(err.value)
    assert "backbone 'toy' has no argument 'dpeth' (did you mean 'depth'?). It accepts: width, depth, scale" in msg
    assert "has no argument 'zzz'. It accepts" in msg
    with pytest.raises(BuildError, match="backbone 'toy' needs 'width'; set it in the config"):
        regs.build("backbone", "toy")


def test_unknown_name_suggests_the_closest(regs):
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'resnet19' \(did you mean "
                       r"'resnet18'\?\)\. Registered backbones: resnet18, toy\."):
        regs.build("backbone", {"name": "resnet19"})
    with pytest.raises(UnknownNameError, match="No losses are registered"):
        regs["loss"].get("ce")


@pytest.mark.parametrize("cfg, message", [
    (3, "a backbone config must be a mapping with a 'name' key or a name string, got int: 3"),
    ({"width": 3}, "a backbone config needs a string 'name' key, got keys ['width']"),
])
def test_malformed_configs(regs, cfg, message):
    with pytest.raises(BuildError) as err:
        regs.build("backbone", cfg)
    assert message in str(err.value)


def test_runtime_arguments_come_from_the_caller(regs):
    assert regs.build("dataset", "split", split="val").split == "val"
    with pytest.raises(BuildError, match="'split' is passed by the trainer, remove it from the config"):
        regs.build("dataset", {"name": "split", "split": "test"}, split="train")
    with pytest.raises(BuildError, match="does not accept 'rank', which the caller passes"):
        regs.build("dataset", "split", split="train", rank=0)


def test_returned_type_is_checked():
    regs = Registries()
    regs["backbone"].add("no_dim", nn.Identity, plugin="p")
    regs["loss"].add("not_module", lambda: 3, plugin="p")
    with pytest.raises(BuildError, match=r"backbone 'p/no_dim' from plugin 'p' .* returned Identity; a "
                       r"backbone factory must return an nn.Module with an int `out_dim` attribute"):
        regs.build("backbone", "no_dim")
    with pytest.raises(BuildError, match="returned int; a loss factory must return an nn.Module"):
        regs.build("loss", "not_module")


def test_factory_errors_keep_their_type_and_say_where():
    regs = Registries()

    def bad():
        raise ValueError("width must be even")

    regs["model"].add("bad", bad, plugin="p")
    with pytest.raises(ValueError, match="width must be even") as err:
        regs.build("model", "bad")
    if sys.version_info >= (3, 11):  # exception notes
        assert err.value.__notes__ == ["while building model 'p/bad' from plugin 'p' "
                                       f"({__name__}:test_factory_errors_keep_their_type_and_say_where.<locals>.bad)"]


def test_factory_with_var_kwargs_accepts_anything():
    regs = Registries()
    regs["loss"].add("any", lambda **kw: nn.Module(), plugin="p")
    assert isinstance(regs.build("loss", {"name": "any", "whatever": 1}), nn.Module)


def test_nested_build_uses_the_same_registries():
    from fusedembed import build

    regs = Registries()
    regs["backbone"].add("inner", lambda: Toy(3), plugin="p")
    regs["model"].add("outer", lambda backbone: nn.Sequential(build("backbone", backbone)), plugin="p")
    model = regs.build("model", {"name": "outer", "backbone": "inner"})
    assert model[0].out_dim == 3


def test_config_registry_needs_absolute_existing_yaml(tmp_path):
    regs = Registries()
    cfg = tmp_path / "a.yaml"
    cfg.write_text("model: x\n")
    assert regs["recipes"].add("a", cfg, plugin="pl").name == "pl/a"
    assert regs["recipe"].path("pl/a") == cfg
    with pytest.raises(RegistryError, match="is not an existing .yaml/.yml file"):
        regs["recipe"].add("b", tmp_path / "b.yaml", plugin="pl")
    with pytest.raises(TypeError, match="recipes are loaded with fusedembed.load_recipe"):
        regs.build("recipe", "pl/a")


def test_unknown_recipe_of_unavailable_plugin():
    regs = Registries(unavailable={"dualpath": "disabled by FUSEDEMBED_DISABLE_PLUGINS"})
    with pytest.raises(UnknownNameError, match="recipe 'dualpath/scenes' comes from plugin 'dualpath', "
                       "which is not loaded: disabled by FUSEDEMBED_DISABLE_PLUGINS"):
        regs["recipe"].get("dualpath/scenes")


def test_builtin_components_build():
    from fusedembed.plugins import PluginManager

    regs = PluginManager(env={}).registries
    net = regs.build("backbone", {"name": "tiny_cnn", "width": 4, "depth": 2, "pool": "gem"})
    assert net.out_dim == 8 and net(torch.rand(2, 3, 16, 16)).shape == (2, 8)
    assert isinstance(regs.build("loss", "cross_entropy"), nn.Module)
