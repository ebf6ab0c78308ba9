"""Python face of the compiled kernels. Each op checks its input, dispatches through
``torch.ops.fusedembed`` (autograd and torch.compile included) and falls back to the
pure-PyTorch reference in ``_reference`` when the extension is not built."""

from .gem_pool import gem_pool
from .mrf_viterbi import alignment_segments, crf_viterbi, mrf_viterbi
from .sampled_sigmoid_loss import sampled_sigmoid_loss

__all__ = ["gem_pool", "sampled_sigmoid_loss", "mrf_viterbi", "crf_viterbi", "alignment_segments"]
