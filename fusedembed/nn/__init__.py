"""nn.Module layers over fusedembed.ops."""

from .gem import GeM
from .sigmoid_loss import SampledWeightedSigmoidLoss

__all__ = ["GeM", "SampledWeightedSigmoidLoss"]
