import io
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from fusedembed.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(*argv):
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_plugins_table_lists_builtin_and_exits_0():
    code, out = run("plugins")
    assert code == 0
    header, builtin = out.splitlines()[:2]
    assert header.split() == ["PLUGIN", "VERSION", "DISTRIBUTION", "STATUS", "REGISTERED", "/", "ERROR"]
    # the installed distribution's version: a wheel's carries its variant label (0.1.0+pt214cpu)
    assert builtin.split()[:4] == ["builtin", version("fusedembed"), "fusedembed", "loaded"]
    assert "backbones: resnet18, resnet34, resnet50, tiny_cnn" in builtin
    assert "losses: cross_entropy, bce" in out and "models: image_embedding" in out


def test_version_names_the_variant_torch_and_the_kernels(capsys):
    import torch

    import fusedembed

    assert main(["--version"]) == 0
    kernels = ", ".join(fusedembed.build_info()["devices"]) or "none, the pure-PyTorch references run"
    assert capsys.readouterr().out == f"fusedembed {version('fusedembed')} (torch {torch.__version__}; kernels: {kernels})\n"


def test_plugins_reports_a_broken_plugin_and_exits_1(make_plugin):
    make_plugin("broken", "raise ImportError('needs libfoo')\n", version="0.3")
    code, out = run("plugins")
    assert code == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("broken"))
    assert line.split()[:4] == ["broken", "0.3", "fe-test-broken", "failed"]
    assert line.endswith("ImportError: needs libfoo")
    assert "fusedembed plugins -v" in out and "Traceback" not in out
    code, out = run("plugins", "-v")
    assert code == 1 and "--- broken (fe_test_broken) ---\nTraceback" in out


def test_plugins_shows_disabled_and_shared_names(make_plugin, monkeypatch):
    code = "import fusedembed, torch\n@fusedembed.hookimpl\ndef fusedembed_register_losses(register):\n" \
           "    register('cross_entropy', torch.nn.CrossEntropyLoss)\n"
    make_plugin("clash", code)
    code_, out = run("plugins")
    assert code_ == 0 and "losses: cross_entropy" in next(ln for ln in out.splitlines() if ln.startswith("clash"))
    code_, out = run("list", "losses", "cross*")
    assert code_ == 0 and [ln.split()[:2] for ln in out.splitlines()[1:]] == [
        ["builtin/cross_entropy", "builtin"], ["clash/cross_entropy", "clash"]]
    monkeypatch.setenv("FUSEDEMBED_DISABLE_PLUGINS", "clash")
    from fusedembed.plugins import reset_plugin_manager

    reset_plugin_manager()
    code_, out = run("plugins")
    assert code_ == 0 and "disabled by FUSEDEMBED_DISABLE_PLUGINS" in out


def test_demo_lists_the_registered_demos_and_runs_one_with_its_arguments(make_plugin):
    make_plugin("shows", "import fusedembed\n@fusedembed.hookimpl\ndef fusedembed_register_demos(register):\n"
                         "    register('hello', lambda argv: print('hello', *argv) or 3, description='says hello')\n")
    code, out = run("demo")
    assert code == 0 and ["hello", "shows", "says", "hello"] in [ln.split() for ln in out.splitlines()]
    assert run("demo", "hello", "--fast", "x=1")[0] == 3
    assert run("demo", "nope")[0] == 1


def test_list(capsys):
    code, out = run("list", "backbones", "res*")
    assert code == 0
    assert [ln.split()[:2] for ln in out.splitlines()] == [
        ["NAME", "PLUGIN"], ["resnet18", "builtin"], ["resnet34", "builtin"], ["resnet50", "builtin"]]
    assert ["bce", "builtin"] in [ln.split()[:2] for ln in run("list", "loss")[1].splitlines()]
    assert run("list", "backbone", "zz*")[0] == 1
    assert "no backbones match 'zz*'" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert run()[0] == 2
    assert "required: COMMAND" in capsys.readouterr().err
    assert run("list", "widgets")[0] == 2
    assert "unknown kind 'widgets'; expected one of: backbones" in capsys.readouterr().err
    assert run("train")[0] == 2                      # RECIPE missing
    assert run("eval", "x.yaml")[0] == 2             # --checkpoint missing
    assert run("recipe")[0] == 2
    assert run("plugins", "--bogus")[0] == 2
    assert run("train", "r.yaml", "--run-dir", "d", "--bogus")[0] == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["plugins", "--help"], ["list", "--help"],
                                  ["recipe", "--help"], ["recipe", "show", "--help"], ["demo", "--help"]])
def test_help_everywhere(argv, capsys):
    assert run(*argv)[0] == 0
    assert "usage: fusedembed" in capsys.readouterr().out


def test_recipe_show_prints_the_resolved_recipe(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: image_embedding, backbone: tiny_cnn}\ntrainer: {epochs: 3}\n")
    code, out = run("recipe", "show", str(path), "trainer.lr=0.02", "model.num_classes=5")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["trainer"]["lr"] == 0.02 and shown["trainer"]["epochs"] == 3
    assert shown["model"] == {"name": "image_embedding", "backbone": "tiny_cnn", "num_classes": 5}
    assert shown["trainer"]["optimizer"]["name"] == "sgd"  # defaults filled in

    code, out = run("recipe", "show", str(path), "trainer.lrr=0.02")
    assert code == 1 and out == ""
    assert "unknown key 'trainer.lrr' (did you mean 'lr'?)" in capsys.readouterr().err
    assert run("recipe", "show", str(tmp_path / "none.yaml"))[0] == 1
    assert "does not exist" in capsys.readouterr().err
    # Factory arguments are type-checked here too (`width=eight` was printed, exit 0).
    path.write_text("model: {name: image_embedding, backbone: {name: tiny_cnn}}\n")
    code, out = run("recipe", "show", str(path), "model.backbone.width=eight")
    assert code == 1 and out == ""
    assert "model.backbone.width: expected int, got str 'eight'" in capsys.readouterr().err


def test_pyproject_declares_the_script_and_builtin_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["fusedembed"] == "fusedembed.cli:main"
    assert meta["entry-points"]["fusedembed"]["builtin"] == "fusedembed.builtin"


@pytest.mark.parametrize("port", ["0", "99999", "http"])
def test_serve_refuses_a_port_out_of_range_before_loading_anything(port, capsys):
    assert main(["serve", "no-model.pt", "no-index.npy", "--port", port]) == 2
    assert f"argument --port: expected a TCP port in [1, 65535], got '{port}'" in capsys.readouterr().err
