"""Python face of the compiled kernels. Each op checks its input, dispatches through
``torch.ops.fusedembed`` (autograd and torch.compile included) and falls back to the
pure-PyTorch reference in ``_reference`` when the extension is not built."""

from .gem_pool import gem_pool
from .mrf_viterbi import alignment_segments, crf_viterbi, mrf_viterbi

__all__ = ["gem_pool", "mrf_viterbi", "crf_viterbi", "alignment_segments"]
