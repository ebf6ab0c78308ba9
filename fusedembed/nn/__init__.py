"""nn.Module layers over fusedembed.ops."""

from .alignment import Alignment, ViterbiAligner
from .gem import GeM
from .sigmoid_loss import SampledWeightedSigmoidLoss

__all__ = ["GeM", "SampledWeightedSigmoidLoss", "ViterbiAligner", "Alignment"]
