from importlib.metadata import EntryPoint, version

import pytest

import fusedembed
from fusedembed.plugins import BUILTIN, GROUP, PluginManager, discover
from fusedembed.registry import UnknownNameError

GOOD = """
import fusedembed
from torch import nn

class Net(nn.Module):
    '''A test backbone.'''
    def __init__(self, dim: int = 4):
        super().__init__()
        self.out_dim = dim
        self.fc = nn.LazyLinear(dim)
    def forward(self, x):
        return self.fc(x.flatten(1))

@fusedembed.hookimpl
def fusedembed_register_backbones(register):
    register("good_net", Net)

@fusedembed.hookimpl
def fusedembed_register_losses(register):
    register("good_loss", nn.MSELoss, description="mean squared error")
"""


def test_builtin_is_discovered_even_without_its_entry_point():
    eps = discover()
    assert eps[0].name == "builtin" and eps[0].value == "fusedembed.builtin"
    manager = PluginManager()
    info = manager.plugins["builtin"]
    assert info.ok and info.dist == "fusedembed" and info.version == version("fusedembed")
    assert {"resnet18", "resnet34", "resnet50", "tiny_cnn"} <= set(info.registered["backbones"])
    assert manager.registries["backbone"].get("resnet18").plugin == "builtin"


def test_installed_plugin_is_discovered_with_its_version(make_plugin):
    make_plugin("good", GOOD, version="2.5", dist="fe-good")
    manager = PluginManager()
    info = manager.plugins["good"]
    assert (info.status, info.dist, info.version) == ("loaded", "fe-good", "2.5")
    assert info.registered == {"backbones": ["good_net"], "losses": ["good_loss"]}
    regs = manager.registries
    assert regs["losses"].get("good_loss").description == "mean squared error"
    assert regs["backbone"].get("good_net").description == "A test backbone."
    assert regs.build("backbone", {"name": "good_net", "dim": 3}).out_dim == 3


def test_default_manager_and_public_api(make_plugin):
    make_plugin("good", GOOD)
    assert "good/good_net" in fusedembed.get_registry("backbones").list("good*")
    assert fusedembed.build("backbone", "good_net").out_dim == 4


def test_same_bare_name_in_two_plugins_needs_the_full_name(make_plugin):
    make_plugin("first", GOOD, dist="fe-first")
    make_plugin("second", GOOD, dist="fe-second")
    manager = PluginManager()
    assert manager.plugins["first"].ok and manager.plugins["second"].ok
    regs = manager.registries
    with pytest.raises(UnknownNameError, match=r"backbone 'good_net' is registered by several plugins: "
                       r"name one of 'first/good_net', 'second/good_net'"):
        regs.build("backbone", "good_net")
    assert type(regs.build("backbone", "second/good_net")).__module__ == "fe_test_second"
    assert regs["backbone"].names("*good*") == ["first/good_net", "second/good_net"]


def test_duplicate_name_within_one_plugin_fails_that_plugin(make_plugin):
    make_plugin("twice", """
        import fusedembed
        from torch import nn
        @fusedembed.hookimpl
        def fusedembed_register_losses(register):
            register("l1", nn.L1Loss)
            register("l1", nn.L1Loss)
    """)
    info = PluginManager().plugins["twice"]
    assert info.status == "failed" and "loss 'l1' is registered twice by plugin 'twice'" in info.error


@pytest.mark.parametrize("var, value, loaded", [
    ("FUSEDEMBED_DISABLE_PLUGINS", "good", {"builtin", "other"}),
    ("FUSEDEMBED_DISABLE_PLUGINS", " good , builtin ", {"other"}),
    ("FUSEDEMBED_PLUGINS_ONLY", "good", {"good"}),
    ("FUSEDEMBED_PLUGINS_ONLY", "builtin,other", {"builtin", "other"}),
])
def test_disable_and_only_env(make_plugin, monkeypatch, var, value, loaded):
    make_plugin("good", GOOD)
    make_plugin("other", GOOD.replace("good_", "other_"))
    monkeypatch.setenv(var, value)
    manager = PluginManager()
    ours = {n: p for n, p in manager.plugins.items() if n in {"builtin", "good", "other"}}
    assert {n for n, p in ours.items() if p.ok} == loaded
    for name in set(ours) - loaded:
        assert ours[name].status == "disabled" and ours[name].error == f"disabled by {var}"
    assert ("good_net" in manager.registries["backbone"]) == ("good" in loaded)


def test_disabled_module_is_not_imported(make_plugin, monkeypatch):
    make_plugin("boom", "raise RuntimeError('imported!')")
    monkeypatch.setenv("FUSEDEMBED_DISABLE_PLUGINS", "boom,nosuch")
    manager = PluginManager()
    assert manager.plugins["boom"].status == "disabled"
    assert any("'nosuch', which is not installed" in n for n in manager.notes)


def test_plugin_raising_on_import_is_isolated(make_plugin):
    make_plugin("broken", "import fusedembed\nraise ImportError('needs libfoo')\n")
    make_plugin("good", GOOD)
    manager = PluginManager()
    broken = manager.plugins["broken"]
    assert broken.status == "failed" and broken.error == "ImportError: needs libfoo"
    assert "Traceback" in broken.traceback and "fe_test_broken" in broken.traceback
    assert manager.plugins["good"].ok and manager.plugins["builtin"].ok
    # Commands that need what it would have provided fail with its error.
    with pytest.raises(UnknownNameError, match=r"broken \(ImportError: needs libfoo\)"):
        manager.registries.build("backbone", "broken_net")


def test_plugin_calling_sys_exit_on_import_is_isolated(make_plugin):
    make_plugin("exits", "import sys\nsys.exit(3)\n")
    assert PluginManager().plugins["exits"].error == "SystemExit: 3"


def test_plugin_raising_during_registration_registers_nothing(make_plugin):
    make_plugin("half", """
        import fusedembed
        from torch import nn
        @fusedembed.hookimpl
        def fusedembed_register_backbones(register):
            register("half_net", nn.Identity)
        @fusedembed.hookimpl
        def fusedembed_register_losses(register):
            raise ValueError("config file missing")
    """)
    make_plugin("good", GOOD)
    manager = PluginManager()
    assert manager.plugins["half"].error == "ValueError: config file missing"
    assert manager.plugins["half"].registered == {}
    assert "half_net" not in manager.registries["backbone"]  # rolled back, not half-registered
    assert "good_net" in manager.registries["backbone"]
    assert manager.pm.get_plugin("half") is None


@pytest.mark.parametrize("code, message", [
    ("@fusedembed.hookimpl\ndef fusedembed_register_backbone(register): pass\n",
     "unknown hook 'fusedembed_register_backbone' (did you mean 'fusedembed_register_backbones'?)"),
    ("def fusedembed_register_losses(register): pass\n",
     "fusedembed_register_losses lacks the @fusedembed.hookimpl decorator"),
    ("@fusedembed.hookimpl\ndef fusedembed_register_losses(reg): pass\n", "reg"),
    ("@fusedembed.hookimpl\ndef fusedembed_register_losses(register):\n    return {'a': 1}\n",
     "fusedembed_register_losses returned dict; it must call register(name, ...) and return None"),
    ("@fusedembed.hookimpl\ndef fusedembed_register_losses(register):\n    register('x', 3)\n",
     "loss 'x': the factory must be callable (a function or class), got int: 3"),
    ("@fusedembed.hookimpl\ndef fusedembed_register_datasets(register):\n"
     "    register('d', lambda root: None)\n",
     "dataset 'd': a dataset factory must accept the argument(s) split (passed by the trainer)"),
    ("@fusedembed.hookimpl\ndef fusedembed_register_recipes(register):\n"
     "    register('c', 'configs/c.yaml')\n", "the path must be absolute"),
    ("@fusedembed.hookimpl\ndef fusedembed_register_losses(register):\n"
     "    register('bad name', lambda: None)\n", "got 'bad name'"),
])
def test_invalid_plugins_fail_with_a_clear_error(make_plugin, code, message):
    make_plugin("bad", "import fusedembed\n" + code)
    manager = PluginManager()
    assert manager.plugins["bad"].status == "failed"
    assert message in manager.plugins["bad"].error
    assert manager.plugins["builtin"].ok
    assert manager.pm.get_plugin("bad") is None
    manager.pm.check_pending()  # the failed plugin left nothing behind in pluggy


def test_optional_unknown_hook_is_ignored(make_plugin):
    make_plugin("future", GOOD + "\n@fusedembed.hookimpl(optionalhook=True)\n"
                                 "def fusedembed_register_tokenizers(register):\n    register('t', str)\n")
    manager = PluginManager()
    assert manager.plugins["future"].registered == {"backbones": ["good_net"], "losses": ["good_loss"]}


def test_config_of_a_failed_plugin_names_its_error(make_plugin):
    make_plugin("broken", "raise ImportError('needs libfoo')\n")
    with pytest.raises(fusedembed.RecipeError, match="comes from plugin 'broken', which is not "
                                                     "loaded: ImportError: needs libfoo"):
        fusedembed.load_recipe("broken/scenes")


def test_plugin_name_declared_twice_keeps_the_first(make_plugin):
    make_plugin("dup", GOOD, dist="fe-a")
    site = make_plugin("dup2", GOOD.replace("good_", "dup2_"), dist="fe-b")
    (site / "fe_b-1.0.dist-info" / "entry_points.txt").write_text("[fusedembed]\ndup = fe_test_dup2\n")
    manager = PluginManager()
    assert manager.plugins["dup"].dist == "fe-a"
    assert any("plugin name 'dup' is declared twice" in n for n in manager.notes)


def test_explicit_entry_points_and_register():
    manager = PluginManager([BUILTIN, EntryPoint("nope", "no_such_module_xyz", GROUP)], env={})
    assert manager.plugins["nope"].error.startswith("ModuleNotFoundError")
    import types

    module = types.ModuleType("inline")

    @fusedembed.hookimpl
    def fusedembed_register_losses(register):
        register("inline_loss", lambda: None)

    module.fusedembed_register_losses = fusedembed_register_losses
    assert manager.register(module, "inline").registered == {"losses": ["inline_loss"]}
