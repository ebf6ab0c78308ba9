"""Families: one registration (a name with "*" and a resolver) standing for many names."""

import pytest
from torch import nn

from fusedembed.registry import BuildError, DuplicateNameError, Registries, RegistryError, UnknownNameError


class Net(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.out_dim = width


def make(calls):
    def resolve(name):
        """every zoo model"""
        calls.append(name)
        if name == "broken":
            raise LookupError("the zoo library is not installed")
        if not name.startswith("net"):
            return None

        def factory(width: int = int(name[3:] or 4)):
            return Net(width)
        return factory
    return resolve


@pytest.fixture
def regs():
    calls = []
    regs = Registries()
    regs["backbone"].add("*", make(calls), plugin="zoo")
    regs["backbone"].add("plain", Net, plugin="p1")
    regs.calls = calls
    return regs


def test_a_family_resolves_full_names_lazily_and_once(regs):
    backbones = regs["backbone"]
    assert regs.calls == []                                   # registering resolves nothing
    assert regs.build("backbone", "zoo/net8").out_dim == 8
    assert regs.build("backbone", {"name": "zoo/net8", "width": 3}).out_dim == 3
    assert regs.calls == ["net8"]                             # cached after the first lookup
    entry = backbones.get("zoo/net8")
    assert (entry.name, entry.plugin, entry.description) == ("zoo/net8", "zoo", "every zoo model")
    assert "zoo/net16" in backbones and "zoo/cat" not in backbones
    assert backbones.get("plain").plugin == "p1"              # plain names are untouched


def test_a_family_is_listed_once_under_its_pattern(regs):
    backbones = regs["backbone"]
    regs.build("backbone", "zoo/net8")
    assert backbones.list() == ["p1/plain", "zoo/*"] and list(backbones) == ["p1/plain", "zoo/*"]
    assert backbones.names() == ["plain", "zoo/*"] and len(backbones) == 2
    assert [e.name for e in backbones.entries("zoo/*")] == ["zoo/*"] and backbones.list("pla*") == ["p1/plain"]


def test_family_errors_name_the_family_and_the_reason(regs):
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'zoo/cat': zoo/\* \(every zoo model\) has no 'cat'"):
        regs.build("backbone", "zoo/cat")
    with pytest.raises(UnknownNameError, match="backbone 'zoo/broken': the zoo library is not installed"):
        regs.build("backbone", "zoo/broken")
    with pytest.raises(UnknownNameError, match="unknown backbone 'net8'"):      # families resolve full names only
        regs.build("backbone", "net8")
    with pytest.raises(BuildError, match="'zoo/net8' has no argument 'depth'"):
        regs.build("backbone", {"name": "zoo/net8", "depth": 2})
    assert "zoo/*" in str(pytest.raises(UnknownNameError, regs.build, "backbone", "nothing").value)


def test_family_registration_is_checked(regs):
    with pytest.raises(DuplicateNameError, match=r"'zoo/\*' is registered twice"):
        regs["backbone"].add("*", make([]), plugin="zoo")
    regs["backbone"].add("*", make([]), plugin="other")       # another plugin's family is another name
    with pytest.raises(RegistryError, match="the resolver must be callable"):
        regs["backbone"].add("n*", "not callable", plugin="zoo")
    with pytest.raises(RegistryError, match="name must be"):
        regs["backbone"].add("a/*", make([]), plugin="zoo")


def test_a_narrower_pattern_covers_only_its_names():
    regs = Registries()
    regs["backbone"].add("net*", make([]), plugin="zoo")
    assert regs.build("backbone", "zoo/net2").out_dim == 2
    with pytest.raises(UnknownNameError, match="unknown backbone 'zoo/vit'"):
        regs.build("backbone", "zoo/vit")


def test_a_plugin_registers_a_family_through_its_hook():
    import fusedembed
    from fusedembed.plugins import PluginManager

    class Zoo:
        @fusedembed.hookimpl
        def fusedembed_register_backbones(register):
            register("*", make([]), description="zoo models")

    manager = PluginManager([], env={})
    info = manager.register(Zoo, "zoo")
    assert info.ok and info.registered == {"backbones": ["*"]}
    assert manager.registries.build("backbone", "zoo/net5").out_dim == 5
