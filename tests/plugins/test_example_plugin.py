"""The example plugin end to end: installed into a throwaway environment it is discovered, a
recipe uses its backbone, and uninstalling it removes it from ``fusedembed plugins``."""

import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = textwrap.dedent("""
    import io
    import torch
    from fusedembed import build, load_recipe
    from fusedembed.cli import main

    out = io.StringIO()
    print("PLUGINS", main(["plugins"], out=out))
    print(out.getvalue())
    print("SHOW", main(["recipe", "show", "example/tiny", "model.backbone.width=4"], out=io.StringIO()))
    recipe = load_recipe("example/tiny")
    model = build("model", recipe.model)
    out = model({"image": torch.rand(2, 3, 16, 16)})
    print("BACKBONE", type(model.backbone).__module__, model.backbone.out_dim, tuple(out["logits"].shape))
""")


def _run(*cmd, env):
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_install_discover_use_uninstall(tmp_path):
    pytest.importorskip("pip")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("FUSEDEMBED_")}
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                   env=env).stdout.strip()
    # The throwaway env installs into its own site-packages but imports this checkout's
    # fusedembed and the running interpreter's packages (torch, pip, setuptools).
    # addsitedir also runs the .pth files there, so editable installs (seed plugins) import too.
    Path(purelib, "_fusedembed_dev.pth").write_text(
        "\n".join([str(ROOT)] + [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]))
    source = tmp_path / "example"
    shutil.copytree(ROOT / "plugins" / "example", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))

    proc = _run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                "--quiet", source, env=env)
    assert proc.returncode == 0, proc.stderr

    proc = _run(python, "-c", INSTALLED, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "PLUGINS 0" in lines and "SHOW 0" in lines
    row = next(ln for ln in lines if ln.startswith("example "))
    assert row.split()[:4] == ["example", "0.1.0", "fusedembed-example", "loaded"]
    assert "backbones: convnet" in row
    assert "BACKBONE fusedembed_example.components 16 (2, 4)" in lines

    proc = _run(python, "-m", "pip", "uninstall", "--yes", "--quiet", "fusedembed-example", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = _run(python, "-m", "fusedembed", "plugins", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith("builtin ")
    assert "example" not in proc.stdout
