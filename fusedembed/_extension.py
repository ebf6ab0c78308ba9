"""Loads the compiled extension ``fusedembed._C`` once, and says plainly why when it cannot.

``FUSEDEMBED_NO_EXTENSION=1`` hides a built extension, so the pure-PyTorch references run instead
(the test suite runs the op tests both ways)."""

import importlib.util
import os
import warnings

import torch

from . import _variant
from ._version import __version__

REBUILD = "pip install --no-build-isolation -e . (or `make install`)"


def _kernels(cuda_version) -> str:
    return f"CUDA {cuda_version} kernels" if cuda_version else "CPU kernels only"


def _fits(built_torch: str, built_cuda) -> bool:
    """A build runs on the torch minor it was compiled against (the wheel pins torch==X.Y.*) and,
    with CUDA kernels, on a CUDA torch of the same CUDA major."""
    if _variant.torch_minor(built_torch) != _variant.torch_minor(torch.__version__):
        return False
    if built_cuda is None:
        return True
    return torch.version.cuda is not None and _variant.cuda_major(torch.version.cuda) == _variant.cuda_major(built_cuda)


def _reinstall_hint() -> str:
    """The command that installs the variant built for the installed torch (a CUDA torch can also
    take the CPU-only variant), and the rebuild for a source checkout."""
    want = f"fusedembed=={__version__}+{_variant.local_tag(torch.__version__, torch.version.cuda)}"
    cpu = _variant.local_tag(torch.__version__, None)
    alt = f" (or +{cpu}, CPU kernels only)" if torch.version.cuda else ""
    return (f'pip install --force-reinstall --no-deps "{want}"{alt} -f WHEELS, where WHEELS is the '
            f"fusedembed wheel index (a folder or page that `make wheel-index` wrote); "
            f"in a source checkout rebuild instead: {REBUILD}")


def _mismatch(version: str, built_torch: str, built_cuda) -> ImportError:
    installed = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    return ImportError(
        f"fusedembed {version} was built against torch {built_torch} ({_kernels(built_cuda)}) but torch "
        f"{torch.__version__} ({installed}) is installed. Install the variant for this torch: "
        f"{_reinstall_hint()}")


def _load():
    if os.environ.get("FUSEDEMBED_NO_EXTENSION", "") not in ("", "0"):
        return None
    try:
        from . import _build_meta
    except ImportError:
        _build_meta = None
    # Checked before _C is imported: a library built for another torch may not load at all.
    # (getattr: a _build_meta.py written before VERSION and CUDA_VERSION were recorded.)
    if _build_meta is not None:
        built_cuda = getattr(_build_meta, "CUDA_VERSION", None)
        if not _fits(_build_meta.TORCH_VERSION, built_cuda):
            raise _mismatch(getattr(_build_meta, "VERSION", __version__), _build_meta.TORCH_VERSION, built_cuda)
    if importlib.util.find_spec("fusedembed._C") is None:
        return None
    try:
        from . import _C
    except ImportError as err:
        raise ImportError(f"fusedembed._C exists but failed to load ({err}); torch is "
                          f"{torch.__version__}. {_reinstall_hint()}") from err
    info = _C.build_info()
    if not _fits(info["torch_version"], info["cuda_version"]):
        raise _mismatch(info["version"], info["torch_version"], info["cuda_version"])
    return _C


_C = _load()
_warned = set()


def has_extension() -> bool:
    return _C is not None


def warn_reference_fallback(op: str) -> None:
    """Warns once per op that the slow pure-PyTorch reference runs instead of the kernel."""
    if op not in _warned:
        _warned.add(op)
        warnings.warn(f"fusedembed._C is not built: {op} runs the pure-PyTorch reference "
                      f"(same results, slower). Build the kernels with: {REBUILD}",
                      RuntimeWarning, stacklevel=3)


def build_info() -> dict:
    """What the installed extension was compiled with.

    Keys: version, torch_version, cuda_version (None for a CPU-only build), cuda_archs,
    devices (those with kernels), extension (path of the loaded library, None if not built).
    """
    if _C is None:
        return {"version": __version__, "torch_version": None, "cuda_version": None,
                "cuda_archs": [], "devices": [], "extension": None}
    return {**_C.build_info(), "extension": _C.__file__}
