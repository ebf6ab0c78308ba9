"""The op suite again with the extension hidden (FUSEDEMBED_NO_EXTENSION=1): the same schemas,
fake kernels and autograd then run the pure-PyTorch references, and must give the same answers.
Tests of the kernels' argument checks (marker ``extension``) are skipped there."""

import os
import subprocess
import sys

import pytest

import fusedembed

HERE = os.path.dirname(os.path.abspath(__file__))
OP_TESTS = ["test_gem_pool.py", "test_mrf_viterbi.py", "test_sampled_sigmoid_loss.py"]


@pytest.mark.skipif(os.environ.get("FUSEDEMBED_NO_EXTENSION", "") not in ("", "0"),
                    reason="already the run without the extension")
@pytest.mark.skipif(not fusedembed.has_extension(), reason="fusedembed._C is not built: the suite ran without it")
def test_op_suite_passes_with_the_extension_hidden():
    env = {**os.environ, "FUSEDEMBED_NO_EXTENSION": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-W",
           "ignore:fusedembed._C is not built:RuntimeWarning", *(os.path.join(HERE, f) for f in OP_TESTS)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
