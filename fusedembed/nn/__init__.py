"""nn.Module layers over fusedembed.ops (the stateful paper rules around them live in plugins)."""

from .alignment import Alignment, ViterbiAligner
from .gem import GeM
from .modes import eval_mode

__all__ = ["GeM", "ViterbiAligner", "Alignment", "eval_mode"]
