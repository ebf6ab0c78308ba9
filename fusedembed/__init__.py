"""fusedembed: learn image and image-text embeddings with fused kernels and pluggy recipes."""

from ._version import __version__
from ._extension import build_info, has_extension
from . import ops, nn

__all__ = ["__version__", "build_info", "has_extension", "ops", "nn"]

# Plugin system: the marker plugins use, registries, recipes (see hookspecs.py, ARCHITECTURE.md).
from .hookspecs import hookimpl
from .registry import build, get_registry, spec
from .config import ConfigError, load_config, save_config

__all__ += ["hookimpl", "build", "get_registry", "spec", "ConfigError", "load_config", "save_config"]
