"""Loads the compiled extension ``fusedembed._C`` once, and says plainly why when it cannot.

``FUSEDEMBED_NO_EXTENSION=1`` hides a built extension, so the pure-PyTorch references run instead
(the test suite runs the op tests both ways)."""

import importlib.util
import os
import warnings

import torch

from ._version import __version__

REBUILD = "pip install --no-build-isolation -e . (or `make install`)"


def _load():
    if os.environ.get("FUSEDEMBED_NO_EXTENSION", "") not in ("", "0"):
        return None
    try:
        from . import _build_meta
    except ImportError:
        _build_meta = None
    if _build_meta is not None and _build_meta.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"fusedembed._C was built against torch {_build_meta.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed; rebuild it: {REBUILD}")
    if importlib.util.find_spec("fusedembed._C") is None:
        return None
    try:
        from . import _C
    except ImportError as err:
        raise ImportError(f"fusedembed._C exists but failed to load ({err}); torch is "
                          f"{torch.__version__}; rebuild it: {REBUILD}") from err
    built = _C.build_info()["torch_version"]
    if built != torch.__version__:
        raise ImportError(f"fusedembed._C was built against torch {built} but torch "
                          f"{torch.__version__} is installed; rebuild it: {REBUILD}")
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
