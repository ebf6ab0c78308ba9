"""nn.Module layers over fusedembed.ops (the stateful paper rules around them live in plugins)."""

from .alignment import Alignment, ViterbiAligner
from .gem import GeM

__all__ = ["GeM", "ViterbiAligner", "Alignment"]
