import importlib
import sys
import textwrap

import pytest

from fusedembed import plugins


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch):
    """No FUSEDEMBED_* variables from the caller's shell, and a fresh default manager."""
    for var in (plugins.DISABLE_ENV, plugins.ONLY_ENV):
        monkeypatch.delenv(var, raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


@pytest.fixture
def make_plugin(tmp_path, monkeypatch):
    """Writes a plugin module plus a ``.dist-info`` declaring its entry point on a temporary
    sys.path entry, so discovery goes through importlib.metadata as for an installed plugin."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules = []

    def make(name, code="", *, version="1.0", dist=None, files=None):
        module = f"fe_test_{name}"
        (site / f"{module}.py").write_text(textwrap.dedent(code))
        dist = dist or f"fe-test-{name}"
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[fusedembed]\n{name} = {module}\n")
        for rel, text in (files or {}).items():
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            (site / rel).write_text(textwrap.dedent(text))
        modules.append(module)
        importlib.invalidate_caches()
        return site

    yield make
    for module in modules:
        sys.modules.pop(module, None)
