"""The wheels `make wheel` builds: what they require and are called, what they bundle, that they
install and run from site-packages, that pip refuses one next to another torch and takes, from
one index, the variant of the installed torch, and the find-links pages and the wheel matrix.

The tests marked slow build the core wheel once (its extension compiled; ninja reuses build/)."""

import fnmatch
import glob
import importlib
import os
import re
import shutil
import site as sitelib
import struct
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.tags import sys_tags

import fusedembed
from fusedembed import _variant

ROOT = Path(__file__).resolve().parents[1]
tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "pip._vendor.tomli")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TORCH_PIN = f"torch=={_variant.torch_minor(torch.__version__)}.*"
# The environment of subprocesses that must see installed packages only, not this checkout.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
# pip resolving against only what a test lays out: no configured indexes, find-links or constraints.
PIP_ALONE = {**{k: v for k, v in CLEAN_ENV.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull}


def metadata(text: str):
    return Parser().parsestr(text)


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return metadata(z.read(f"{info}/METADATA").decode()), metadata(z.read(f"{info}/WHEEL").decode()), \
            z.read(f"{info}/RECORD").decode()


def elf_needed(data: bytes) -> list:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared library."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynamic = next(s for s in sections if s[1] == 6)           # SHT_DYNAMIC
    strtab_offset = sections[dynamic[6]][4]                     # sh_link: its string table
    needed = []
    for pos in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:                                            # DT_NULL
            break
        if tag == 1:                                            # DT_NEEDED
            end = data.index(b"\0", strtab_offset + value)
            needed.append(data[strtab_offset + value:end].decode())
    return needed


def copy_sources(dest: Path) -> Path:
    """What setup.py reads, copied, so that its runs write their generated files elsewhere."""
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "constraints.txt"):
        shutil.copy(ROOT / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "generated", "_build_meta.py")
    shutil.copytree(ROOT / "csrc", dest / "csrc", ignore=skip)
    shutil.copytree(ROOT / "fusedembed", dest / "fusedembed", ignore=skip)
    return dest


def setup_py(cwd: Path, command: str, out: Path, **env: str) -> None:
    """``setup.py COMMAND`` writing into ``out`` (``dist_info --output-dir``, ``sdist -d``)."""
    out.mkdir()
    flag = "--output-dir" if command == "dist_info" else "-d"
    proc = subprocess.run([sys.executable, "setup.py", "-q", command, flag, str(out)], cwd=cwd, capture_output=True,
                          text=True, env={**CLEAN_ENV, "FUSEDEMBED_CUDA": "0", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]


# -- the variant: label and pins, from the torch a build is made against ----------------------

def test_variant_label_and_pins():
    assert _variant.local_tag("2.14.1+cu130", None) == "pt214cpu"
    assert _variant.local_tag("2.14.1", "13.0") == "pt214cu130"
    assert _variant.local_tag("2.4.0", "12.4") == "pt24cu124"
    assert _variant.requirements(None, None)[0] == "torch>=2.4"
    assert _variant.requirements("2.14.1+cpu", None)[0] == "torch==2.14.*"
    cuda = [Requirement(req) for req in _variant.requirements("2.14.1", "13.0")]
    assert str(cuda[1]) == 'cuda-toolkit[cudart]==13.*; platform_system == "Linux"'
    # The CUDA variant takes any CUDA build of torch 2.14 and no CPU build.
    assert all(cuda[0].specifier.contains(v) for v in ("2.14.0", "2.14.1+cu130", "2.14.3+cu126"))
    assert not any(cuda[0].specifier.contains(v) for v in ("2.14.0+cpu", "2.14.9+cpu", "2.13.0", "2.15.0"))
    with pytest.raises(ValueError, match=r"torch_version: expected a version like '2.14.1', got 'nightly'"):
        _variant.local_tag("nightly", None)
    with pytest.raises(ValueError, match=r"cuda_version: expected a version like '13.0', got '13'"):
        _variant.requirements("2.14.1", "13")


@pytest.mark.slow
def test_setup_metadata_wheel_pins_sdist_stays_loose(tmp_path):
    src = copy_sources(tmp_path / "src")
    label = _variant.local_tag(torch.__version__, None)

    setup_py(src, "dist_info", tmp_path / "wheel")
    (info,) = (tmp_path / "wheel").glob("*.dist-info")
    meta = metadata((info / "METADATA").read_text())
    assert meta["Version"] == f"{fusedembed.__version__}+{label}"
    assert meta.get_all("Requires-Dist")[0] == TORCH_PIN

    setup_py(src, "dist_info", tmp_path / "plain", FUSEDEMBED_LOCAL_VERSION="0")
    (info,) = (tmp_path / "plain").glob("*.dist-info")
    assert metadata((info / "METADATA").read_text())["Version"] == fusedembed.__version__

    setup_py(src, "sdist", tmp_path / "sdist")
    (sdist,) = (tmp_path / "sdist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        meta = metadata(tar.extractfile(f"{top}/PKG-INFO").read().decode())
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert meta["Version"] == fusedembed.__version__
    assert meta.get_all("Requires-Dist")[0] == "torch>=2.4"
    for source in ("csrc/ops/common.h", "csrc/cpu/vec_math.h", "csrc/cuda/vec.h", "csrc/fusedembed.cpp"):
        assert f"{top}/{source}" in names, f"the sdist lacks {source}"
    assert not [n for n in names if n.endswith((".so", "_build_meta.py")) or "/generated/" in n]

    # A wheel built from the sdist keeps its version (pip checks it against the sdist's name).
    setup_py(tmp_path / "unpacked" / top, "dist_info", tmp_path / "from_sdist")
    (info,) = (tmp_path / "from_sdist").glob("*.dist-info")
    meta = metadata((info / "METADATA").read_text())
    assert meta["Version"] == fusedembed.__version__
    assert meta.get_all("Requires-Dist")[0] == TORCH_PIN


def cuda_home():
    """A CUDA toolkit with nvcc: $CUDA_HOME, else the newest /usr/local/cuda-*; None without one."""
    homes = [os.environ.get("CUDA_HOME", ""), *sorted(glob.glob("/usr/local/cuda-*"), reverse=True), "/usr/local/cuda"]
    return next((h for h in homes if h and os.path.exists(os.path.join(h, "bin", "nvcc"))), None)


@pytest.mark.slow
@pytest.mark.skipif(torch.version.cuda is None, reason="a CUDA wheel needs a CUDA torch")
@pytest.mark.skipif(cuda_home() is None, reason="no CUDA toolkit (nvcc) found")
def test_setup_metadata_cuda_variant(tmp_path):
    """FUSEDEMBED_CUDA=1 (metadata only, nothing compiled): the cu label and the CUDA runtime pin."""
    src = copy_sources(tmp_path / "src")
    setup_py(src, "dist_info", tmp_path / "wheel", FUSEDEMBED_CUDA="1", CUDA_HOME=cuda_home())
    (info,) = (tmp_path / "wheel").glob("*.dist-info")
    meta = metadata((info / "METADATA").read_text())
    assert meta["Version"] == f"{fusedembed.__version__}+{_variant.local_tag(torch.__version__, torch.version.cuda)}"
    major = _variant.cuda_major(torch.version.cuda)
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")[:2]]
    want = [Requirement(r) for r in _variant.requirements(torch.__version__, torch.version.cuda)[:2]]
    assert [(r.name, r.specifier) for r in requires] == [(r.name, r.specifier) for r in want]
    assert str(requires[1]) == f'cuda-toolkit[cudart]=={major}.*; platform_system == "Linux"'
    build_meta = (src / "fusedembed" / "_build_meta.py").read_text()
    assert f"CUDA_VERSION = {torch.version.cuda!r}" in build_meta


@pytest.mark.slow
def test_plugin_wheels_are_pure_and_need_this_minor(tmp_path):
    plugins = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    copies = [shutil.copytree(p, tmp_path / "src" / p.name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
              for p in plugins]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                    "-w", str(tmp_path / "dist"), *map(str, copies)], check=True, env=CLEAN_ENV)
    wheels = sorted((tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == len(plugins), wheels
    for wheel in wheels:
        assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
        meta, _, record = wheel_metadata(wheel)
        assert "fusedembed<0.2,>=0.1" in meta.get_all("Requires-Dist"), (wheel.name, meta.get_all("Requires-Dist"))
        assert ".so," not in record


# -- the find-links pages --------------------------------------------------------------------

def fake_wheel(folder: Path, name: str, version: str, tag: str, requires=()) -> Path:
    """A minimal valid wheel: enough for pip to resolve and check it."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-{tag}.whl"
    requires = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}")
        z.writestr(f"{dist}.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def pip_picks(page: Path, tmp_path: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                          "--target", str(tmp_path / "target"), "-f", str(page), "fusedembed"],
                         capture_output=True, text=True, env=PIP_ALONE)
    assert out.returncode == 0, out.stdout + out.stderr
    return re.search(r"Would install (\S+)", out.stdout).group(1)


def test_wheel_index_pages_pick_their_variant(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import wheel_index
    finally:
        sys.path.pop(0)
    dist = tmp_path / "dist"
    dist.mkdir()
    tag = next(iter(sys_tags()))  # this interpreter's most specific tag, so pip accepts the fakes
    for label in ("pt213cpu", "pt214cpu"):
        fake_wheel(dist, "fusedembed", f"0.1.0+{label}", str(tag))
    fake_wheel(dist, "fusedembed-dualpath", "0.1.0", "py3-none-any")

    pages = wheel_index.write_index(dist)
    assert [p.name for p in pages] == ["index.html", "pt213cpu.html", "pt214cpu.html"]
    links = {p.name: re.findall(r'href="([^"#]+)#sha256=([0-9a-f]{64})"', p.read_text()) for p in pages}
    assert len(links["index.html"]) == 3
    for href, digest in links["index.html"]:
        assert wheel_index.sha256(dist / href.replace("%2B", "+")) == digest
    assert [h for h, _ in links["pt213cpu.html"]] == ["fusedembed-0.1.0%2Bpt213cpu-" + f"{tag}.whl",
                                                      "fusedembed_dualpath-0.1.0-py3-none-any.whl"]

    assert pip_picks(dist / "pt213cpu.html", tmp_path) == "fusedembed-0.1.0+pt213cpu"
    assert pip_picks(dist / "index.html", tmp_path) == "fusedembed-0.1.0+pt214cpu"

    # pip checks the fragment: a page whose hash is off is refused.
    page = dist / "pt213cpu.html"
    page.write_text(re.sub(r"sha256=[0-9a-f]", "sha256=x", page.read_text(), count=1))
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                          "--target", str(tmp_path / "target"), "-f", str(page), "fusedembed==0.1.0+pt213cpu"],
                         capture_output=True, text=True, env=PIP_ALONE)
    assert out.returncode != 0 and "HASHES" in out.stderr, out.stdout + out.stderr

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"folder: expected wheels \(\*\.whl\) in .*empty, found none"):
        wheel_index.write_index(tmp_path / "empty")


def fake_installed(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("test\n")
    (info / "RECORD").write_text("")


def scratch_env(env_dir: Path, requires: list, torch_version: str) -> Path:
    """A venv whose only packages are fake distributions meeting `requires` (Requires-Dist lines),
    torch at torch_version, the CUDA toolkit at the major a requirement asks for; returns its python."""
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name == "torch":
            version = torch_version
        elif req.name == "cuda-toolkit":
            version = str(req.specifier).removeprefix("==").replace("*", "0")
        else:
            version = "999"
        if not (site / f"{req.name.replace('-', '_')}-{version}.dist-info").exists():
            fake_installed(site, req.name, version)
    return py


def pip_install_in(py: Path, find_links: Path, *requirements: str):
    """`pip install --dry-run` into the environment of `py`, offline, from find_links only."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--dry-run", "--no-index",
                           "-f", str(find_links), *requirements], capture_output=True, text=True, env=PIP_ALONE)


@pytest.mark.parametrize("installed, picked", [("2.14.1+cpu", "pt214cpu"), ("2.14.1+cu130", "pt214cu130"),
                                               ("2.14.1", "pt214cu130")])
def test_one_index_picks_the_variant_of_the_installed_torch(tmp_path, installed, picked):
    """dist/ holding the CPU and the CUDA variant: pip takes the CUDA one next to a CUDA build of
    torch (PyPI's has no label) and the CPU one next to a CPU build, which the CUDA variant refuses,
    with or without the README's pin of the installed torch."""
    dist = tmp_path / "dist"
    dist.mkdir()
    tag = str(next(iter(sys_tags())))
    requires = {}
    for label, cuda in (("pt214cpu", None), ("pt214cu130", "13.0")):
        requires[label] = _variant.requirements("2.14.1", cuda)
        fake_wheel(dist, "fusedembed", f"0.1.0+{label}", tag, requires[label])
    # The environment meets every requirement of both but the torch pin: only torch decides.
    py = scratch_env(tmp_path / "env", requires["pt214cpu"] + requires["pt214cu130"][1:], installed)
    for pin in ((), (f"torch=={installed}",)):
        out = pip_install_in(py, dist, "fusedembed", *pin)
        assert out.returncode == 0, out.stdout + out.stderr
        assert re.search(r"Would install (\S+)", out.stdout).group(1) == f"fusedembed-0.1.0+{picked}", out.stdout


# -- the wheel matrix ------------------------------------------------------------------------

def test_workflow_builds_the_cibuildwheel_matrix():
    workflow = yaml.safe_load((ROOT / ".github/workflows/wheels.yml").read_text())
    job = workflow["jobs"]["core"]
    matrix = job["strategy"]["matrix"]
    step = next(s for s in job["steps"] if s.get("uses", "").startswith("pypa/cibuildwheel@"))
    assert step["env"]["CIBW_BUILD"] == "${{ matrix.python }}-manylinux_x86_64"
    built = {f"{py}-manylinux_x86_64" for py in matrix["python"]}
    assert built == set(PYPROJECT["tool"]["cibuildwheel"]["build"].split())
    assert matrix["python"] == ["cp310", "cp311", "cp312", "cp313"]
    envs = {inc["variant"]: inc["environment"] for inc in matrix["include"]}
    assert set(envs) == set(matrix["variant"]) == {"cpu", "cu130"}
    assert "FUSEDEMBED_CUDA=0" in envs["cpu"] and "FUSEDEMBED_CUDA=1" in envs["cu130"]
    test_command = PYPROJECT["tool"]["cibuildwheel"]["test-command"]
    assert "pytest {project}/tests" in test_command and "-m 'not cuda and not slow'" in test_command


# -- the built core wheel --------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(dist),
                    str(ROOT)], check=True, env={**CLEAN_ENV, "FUSEDEMBED_CUDA": "0"})
    wheels = list(dist.glob("fusedembed-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_requires_the_torch_it_was_built_with(built_wheel):
    meta, wheel, _ = wheel_metadata(built_wheel)
    label = _variant.local_tag(torch.__version__, None)
    assert meta["Version"] == f"{fusedembed.__version__}+{label}"
    requires = meta.get_all("Requires-Dist")
    assert TORCH_PIN in requires and "torch>=2.4" not in requires
    interp = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert wheel["Tag"] == f"{interp}-{interp}-{sysconfig.get_platform().replace('-', '_')}"
    assert wheel["Root-Is-Purelib"] == "false"
    assert built_wheel.name.startswith(f"fusedembed-{fusedembed.__version__}+{label}-{interp}-")


@pytest.mark.slow
def test_wheel_links_torch_and_bundles_none_of_it(built_wheel):
    """The extension needs libtorch and libc10 from the user's torch, the wheel carries no copy, and
    the cibuildwheel repair step excludes every such library it needs (auditwheel would bundle it)."""
    _, _, record = wheel_metadata(built_wheel)
    files = [line.split(",")[0] for line in record.splitlines() if line]
    libraries = [f for f in files if re.search(r"\.so(\.|$)", f)]
    assert len(libraries) == 1 and re.fullmatch(r"fusedembed/_C\.[^/]+\.so", libraries[0]), libraries
    with zipfile.ZipFile(built_wheel) as z:
        needed = elf_needed(z.read(libraries[0]))
    assert "libc10.so" in needed and "libtorch_cpu.so" in needed, needed
    excludes = re.findall(r"--exclude '([^']+)'", PYPROJECT["tool"]["cibuildwheel"]["linux"]["repair-wheel-command"])
    from_torch = [lib for lib in needed if lib.startswith(("libtorch", "libc10", "libgomp", "libcu", "libnv"))]
    for lib in from_torch:
        assert any(fnmatch.fnmatch(lib, pattern) for pattern in excludes), f"repair would bundle {lib}"


@pytest.mark.slow
def test_wheel_installs_and_passes_the_op_tests(built_wheel, tmp_path):
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    py = str(env_dir / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Share this environment's torch (and other dependencies) without its editable fusedembed:
    # a bare path in a .pth is added to sys.path, but .pth files inside it are not run.
    with open(os.path.join(site, "shared_deps.pth"), "w") as f:
        f.write("".join(path + "\n" for path in sitelib.getsitepackages()))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(built_wheel)],
                   check=True, env=CLEAN_ENV)

    out = subprocess.run([py, "-c", "import fusedembed; print(fusedembed.build_info()['extension'])"],
                         capture_output=True, text=True, cwd=tmp_path, env=CLEAN_ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(site), f"loaded {out.stdout.strip()}, not the wheel's extension in {site}"
    # The op tests, compiled kernels against the references, run on the installed package.
    tests = sorted(glob.glob(str(ROOT / "tests" / "ops" / "test_*.py")))
    out = subprocess.run([py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not cuda and not slow",
                          *tests], capture_output=True, text=True, cwd=tmp_path,
                         env={**CLEAN_ENV, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"\d+ passed", out.stdout), out.stdout[-2000:]
    assert "fusedembed._C is not built" not in out.stdout, "the extension's tests were skipped"


@pytest.mark.slow
@pytest.mark.parametrize("same_minor", [True, False], ids=["same-torch", "other-torch"])
def test_pip_refuses_the_wheel_next_to_another_torch(built_wheel, tmp_path, same_minor):
    """A scratch environment whose only packages are fake distributions: every requirement of the
    wheel satisfied, torch at this minor or another one, nothing else to be had (--no-index)."""
    major, minor = map(int, _variant.torch_minor(torch.__version__).split("."))
    torch_version = f"{major}.{minor}.0" if same_minor else f"{major}.{minor - 1}.0"
    meta, _, _ = wheel_metadata(built_wheel)
    py = scratch_env(tmp_path / "env", meta.get_all("Requires-Dist"), torch_version)
    out = pip_install_in(py, built_wheel.parent, "fusedembed")
    if same_minor:
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"Would install fusedembed-{meta['Version']}" in out.stdout, out.stdout
    else:
        assert out.returncode != 0, out.stdout
        assert TORCH_PIN in out.stdout + out.stderr, out.stdout + out.stderr
