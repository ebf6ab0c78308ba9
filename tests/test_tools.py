"""The developer tools under tools/ that CI cannot otherwise exercise (the GPU checks) still run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fusedembed

ROOT = Path(__file__).resolve().parents[1]


def sanitize_ops(**env):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "sanitize_ops.py"), "--device", "cpu"],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


@pytest.mark.skipif(not fusedembed.has_extension(), reason="fusedembed._C is not built")
def test_sanitize_ops_checks_every_kernel_against_its_reference():
    out = sanitize_ops()
    assert out.returncode == 0, out.stdout + out.stderr
    for kernel in ("gem_pool", "sampled_sigmoid_loss", "mrf_viterbi", "crf_viterbi"):
        assert kernel in out.stdout
    assert "MISMATCH" not in out.stdout and "all kernels match the reference" in out.stdout


def test_sanitize_ops_refuses_a_device_without_kernels():
    # Without the extension the ops run the references: comparing them with themselves proves nothing.
    out = sanitize_ops(FUSEDEMBED_NO_EXTENSION="1")
    assert out.returncode == 1 and "--device: expected a device fusedembed._C has kernels for" in out.stderr


def test_device_check_script_parses():
    out = subprocess.run(["bash", "-n", str(ROOT / "tools" / "device_check.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
