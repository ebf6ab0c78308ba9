"""The commands the plugins' READMEs show name real things and fail as a user would want.

Each ``bash`` line of ``plugins/*/*.md`` is checked without training anything: a ``train`` line's
recipe and overrides load (``recipe show``), a demo answers ``--help``, an install names real
paths and extras, a test command real paths. Every other command is run as written in an empty
folder, where the data and checkpoints it names do not exist: it must either work or end with
one line naming what is missing (status 1), never a usage error or a traceback.
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "pip._vendor.tomli")
FUSEDEMBED = [sys.executable, "-m", "fusedembed"]


def plugin_commands():
    """(plugin, command) for every command line of the plugins' Markdown files, in order."""
    out = []
    for md in sorted(ROOT.glob("plugins/*/*.md")):
        for block in re.findall(r"```bash\n(.*?)```", md.read_text(encoding="utf-8"), flags=re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                if line and (md.parent.name, line) not in out:
                    out.append((md.parent.name, line))
    return out


COMMANDS = plugin_commands()


def run(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def check_install(argv: list) -> None:
    for word in argv[argv.index("install") + 1:]:
        if word.startswith("-"):
            continue
        path, _, extras = word.partition("[")
        assert (ROOT / path / "pyproject.toml").exists(), f"{path} is not a package in the repository"
        declared = tomllib.loads((ROOT / path / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
        for extra in filter(None, extras.rstrip("]").split(",")):
            assert extra in declared, f"{path} has no extra {extra!r} (it has {sorted(declared)})"


def test_the_plugins_readmes_show_commands():
    shown = {plugin for plugin, _ in COMMANDS}
    assert {"alignment", "dualpath", "mlimages", "multigrain", "example"} <= shown, shown


@pytest.mark.parametrize("plugin, cmd", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_plugin_readme_command(plugin, cmd, tmp_path):
    if importlib.util.find_spec(f"fusedembed_{plugin}") is None:
        pytest.skip(f"the {plugin} plugin is not installed here")
    argv = shlex.split(cmd)
    if argv[0] == "pip":
        return check_install(argv)
    if argv[0] == "python":
        argv[0] = sys.executable
    if argv[0] == "fusedembed":
        argv[:1] = FUSEDEMBED
    tail = argv[3:] if argv[:3] == FUSEDEMBED else None     # the fusedembed command's arguments

    if argv[1:3] == ["-m", "pytest"]:
        for path in (a for a in argv[3:] if not a.startswith("-")):
            assert (ROOT / path).exists(), f"{cmd}: {path} does not exist"
        return
    if tail and tail[0] == "train":
        # The recipe and its overrides load; --run-dir D is the train command's own option.
        rest = [a for i, a in enumerate(tail[2:]) if a != "--run-dir" and tail[1 + i] != "--run-dir"]
        proc = run([*FUSEDEMBED, "recipe", "show", tail[1], *rest], tmp_path)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
        return
    if (tail and tail[0] == "demo") or argv[-1].endswith(".demo"):
        proc = run([*argv, "--help"], tmp_path)
        assert proc.returncode == 0 and "usage:" in proc.stdout, f"{cmd}: {proc.stdout}{proc.stderr}"
        return

    proc = run(argv, tmp_path)
    assert "Traceback" not in proc.stderr, f"{cmd}:\n{proc.stderr[-3000:]}"
    assert proc.returncode in (0, 1), f"{cmd}: status {proc.returncode}\n{proc.stderr[-3000:]}"
    if proc.returncode == 1:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "usage:" not in proc.stderr, f"{cmd}: expected one line, got:\n{proc.stderr}"
