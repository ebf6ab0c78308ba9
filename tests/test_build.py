"""The extension is built, says what it is, and refuses to run against another torch."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedembed
from fusedembed import _variant


def test_build_info_describes_the_extension():
    info = fusedembed.build_info()
    assert info["version"] == fusedembed.__version__
    assert info["torch_version"] == torch.__version__
    assert "cpu" in info["devices"]
    assert info["extension"] and os.path.exists(info["extension"])
    assert ("cuda" in info["devices"]) == (info["cuda_version"] is not None)
    if info["cuda_version"] is not None:
        assert info["cuda_archs"], "a CUDA build lists the archs it compiled"


def test_every_schema_has_a_cpu_kernel():
    names = [n for n in dir(torch.ops.fusedembed) if not n.startswith("_") and n not in ("name", "dispatch")]
    assert "gem_pool" in names
    for name in names:
        op = getattr(torch.ops.fusedembed, name)
        if isinstance(op, torch._ops.OpOverloadPacket):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CPU"), name


@pytest.mark.parametrize("built_torch, built_cuda", [("1.0.0+old", None), (torch.__version__, "1.0")],
                         ids=["other-torch", "other-cuda-major"])
def test_stale_build_is_named(tmp_path, built_torch, built_cuda):
    """A build for another torch (or CUDA major) fails import with both versions and the commands
    that install the right variant or rebuild."""
    pkg = tmp_path / "fusedembed"
    src = os.path.dirname(fusedembed.__file__)
    pkg.mkdir()
    for name in os.listdir(src):
        if name.endswith(".py") or name in ("ops", "nn"):
            target = pkg / name
            os.symlink(os.path.join(src, name), target)
    (pkg / "_build_meta.py").unlink(missing_ok=True)
    (pkg / "_build_meta.py").write_text(f"VERSION = '0.1.0+pt10cpu'\nTORCH_VERSION = {built_torch!r}\n"
                                        f"CUDA_VERSION = {built_cuda!r}\n")
    code = textwrap.dedent("""
        import sys; sys.path.insert(0, sys.argv[1])
        import fusedembed
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode != 0
    assert f"fusedembed 0.1.0+pt10cpu was built against torch {built_torch} (" in result.stderr
    assert f"but torch {torch.__version__} (" in result.stderr
    want = f"fusedembed=={fusedembed.__version__}+{_variant.local_tag(torch.__version__, torch.version.cuda)}"
    assert f'pip install --force-reinstall --no-deps "{want}"' in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr


def test_without_extension_ops_fall_back_with_one_warning():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["fusedembed._C"] = None  # as if the extension was never built
        import torch, fusedembed
        from fusedembed.ops import _reference, gem_pool
        assert not fusedembed.has_extension() and fusedembed.build_info()["extension"] is None
        x = torch.rand(2, 3, 5, 5)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            y = gem_pool(x, 3.0)
            gem_pool(x, 3.0)
        assert len(seen) == 1 and "fusedembed._C is not built" in str(seen[0].message), seen
        torch.testing.assert_close(y, _reference.gem_pool(x, torch.tensor(3.0)))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
