"""`make wheel`'s wheel installs into a fresh environment and its op runs from site-packages."""

import glob
import os
import site as sitelib
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(dist),
                    ROOT], check=True, env={**os.environ, "FUSEDEMBED_CUDA": "0"})
    wheels = glob.glob(str(dist / "fusedembed-*.whl"))
    assert len(wheels) == 1, wheels

    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    py = str(env_dir / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Share this environment's torch (and other dependencies) without its editable fusedembed:
    # a bare path in a .pth is added to sys.path, but .pth files inside it are not run.
    with open(os.path.join(site, "shared_deps.pth"), "w") as f:
        f.write("".join(path + "\n" for path in sitelib.getsitepackages()))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheels[0]], check=True)

    code = ("import fusedembed, torch; "
            "print(fusedembed.__file__); "
            "x = torch.rand(2, 3, 4, 4); "
            "ref = fusedembed.ops._reference.gem_pool(x, torch.tensor(3.0)); "
            "torch.testing.assert_close(fusedembed.ops.gem_pool(x, 3.0), ref); "
            "print(fusedembed.build_info()['devices'])")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    location, devices = out.stdout.strip().splitlines()
    assert location.startswith(site), f"imported from {location}, not the wheel in {site}"
    assert "cpu" in devices
