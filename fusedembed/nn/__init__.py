"""nn.Module layers over fusedembed.ops."""

from .alignment import Alignment, ViterbiAligner
from .gem import GeM

__all__ = ["GeM", "ViterbiAligner", "Alignment"]
