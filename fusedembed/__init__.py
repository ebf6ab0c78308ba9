"""fusedembed: learn image and image-text embeddings with fused kernels and pluggy recipes."""

from ._version import __version__
from ._extension import build_info, has_extension
from . import ops, nn

__all__ = ["__version__", "build_info", "has_extension", "ops", "nn"]
