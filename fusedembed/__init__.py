"""fusedembed: learn image and image-text embeddings with fused kernels and pluggy recipes.

Kernels: :mod:`fusedembed.ops` (layers over them in :mod:`fusedembed.nn`). Plugins implement the
hooks of :mod:`fusedembed.hookspecs`; :func:`build` makes a registered component, :func:`load_recipe`
a validated recipe, :mod:`fusedembed.trainer` trains it.
"""

from . import nn, ops
from ._extension import build_info, has_extension
from ._version import __version__
from .config import RecipeError, load_recipe, save_recipe
from .hookspecs import hookimpl
from .plugins import build, current_registries, get_registry
from .registry import Registries, spec

__all__ = ["__version__", "build_info", "has_extension", "ops", "nn", "hookimpl", "build",
           "current_registries", "get_registry", "Registries", "spec", "RecipeError", "load_recipe",
           "save_recipe"]
