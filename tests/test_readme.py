"""Every command README.md shows works as written.

The commands are read from the README itself (its ``bash`` blocks and its inline code that
starts with a command), so a new command without a way to check it fails here. Commands on
the trained demo model run against the demo recipe shrunk to seconds (the plugin's
``tiny_overrides``), in a scratch folder standing for the repository root; ``make`` targets are
dry-run (running them would rebuild this very environment), installs are checked against what
they name.
"""

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tomllib is 3.11+; pip vendors tomli for 3.10 (as the Makefile reads pyproject.toml).
tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "pip._vendor.tomli")
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(make|pip|python|\.venv/bin/python|curl) ")

pytest.importorskip("fusedembed_dualpath")


def readme_commands():
    """Commands in order: lines of ``bash`` blocks (comments dropped), then inline code."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    seen, out = set(), []
    for cmd in [*lines, *inline]:
        if cmd and COMMAND.match(cmd) and cmd not in seen:
            seen.add(cmd)
            out.append(cmd)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runner:
    """Runs README commands in ``cwd`` with this interpreter for ``python``/``.venv/bin/python``."""

    def __init__(self, cwd: Path, tiny: list, port: int):
        self.cwd, self.tiny, self.port = cwd, tiny, port
        self.recipe = cwd / "recipe.yaml"
        self.server = None

    def argv(self, cmd: str) -> list:
        cmd = cmd.replace("RECIPE", str(self.recipe)).replace("8000", str(self.port))
        cmd = re.sub(r"recipe show NAME\b", "recipe show dualpath/scenes", cmd)
        cmd = re.sub(r"demo NAME\b", "demo dualpath", cmd)
        argv = shlex.split(cmd)
        if argv[0] in ("python", ".venv/bin/python"):
            argv[0] = sys.executable
        return argv

    def run(self, cmd: str, *extra: str) -> str:
        proc = subprocess.run([*self.argv(cmd), *extra], cwd=self.cwd, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def serve(self, cmd: str) -> None:
        self.server = subprocess.Popen(self.argv(cmd), cwd=self.cwd, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.server.poll() is None, f"{cmd} exited:\n{self.server.stdout.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"{cmd}: no /health answer in 120 s")

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=30)


def check_install(cmd: str) -> None:
    """An install line names real extras, real paths and importable packages."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in re.findall(r"\.\[([\w,-]+)\]", cmd):
        for extra in spec.split(","):
            assert extra in extras, f"{cmd}: no extra {extra!r} in pyproject.toml"
    words = [w for w in shlex.split(cmd) if not w.startswith("-") and "=" not in w]
    for name in words[words.index("install") + 1:]:
        if name.startswith("dist/"):
            continue                      # a built wheel: tests/test_wheel.py installs one
        if name.startswith("."):
            assert (ROOT / name.split("[")[0]).exists(), f"{cmd}: {name} does not exist"
        else:
            assert importlib.util.find_spec(name), f"{cmd}: {name} is not installed by the test extra"


def test_every_readme_command_runs(tmp_path, scenes_root):
    from fusedembed_dualpath.testing import tiny_overrides

    cmds = readme_commands()
    assert "make demo" in cmds and "make test" in cmds
    runner = Runner(tmp_path, tiny_overrides(scenes_root), free_port())
    # The trained model the later commands use, as `make demo` trains it (shrunk).
    demo = next(c for c in cmds if re.fullmatch(r"python -m fusedembed demo dualpath", c))
    runner.run(demo, "--run-dir", "runs/demo", *runner.tiny)
    assert (tmp_path / "runs/demo/best.pt").exists()
    runner.recipe.write_text(runner.run("python -m fusedembed recipe show dualpath/scenes", *runner.tiny))

    done = {demo}
    try:
        for cmd in cmds:
            if cmd in done:
                continue
            head = COMMAND.match(cmd).group(1)
            if head == "make":
                target = cmd.split()[1:]
                proc = subprocess.run(["make", "-n", *target], cwd=ROOT, capture_output=True, text=True)
                assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
            elif " pip install" in f" {cmd}" or cmd.startswith("pip "):
                check_install(cmd)
            elif cmd.startswith(("FUSEDEMBED_CUDA=1", "python -m pytest -m cuda")):
                # The GPU build and the GPU tests: the marker must select tests (run with a GPU).
                proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "--co", "-q", "tests/ops"],
                                      cwd=ROOT, capture_output=True, text=True)
                assert proc.returncode == 0 and " tests collected" in proc.stdout.splitlines()[-1]
            elif head == "curl":
                if shutil.which("curl") is None:
                    continue
                out = runner.run(cmd)
                assert '"results"' in out or '"id"' in out, out
            elif " serve " in cmd:
                runner.serve(cmd)
            else:
                runner.run(cmd)
            done.add(cmd)
    finally:
        runner.stop()
    assert runner.server is not None, "the README's serve command was not exercised"
