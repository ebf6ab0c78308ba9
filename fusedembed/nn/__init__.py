"""nn.Module layers over fusedembed.ops."""

from .gem import GeM

__all__ = ["GeM"]
