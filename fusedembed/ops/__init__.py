"""Python face of the compiled kernels. Each op converts its Python arguments and dispatches
through ``torch.ops.fusedembed`` (autograd and torch.compile included), defined in ``_library``
whether or not the extension is built; without it the pure-PyTorch references of ``_reference``
are the kernels."""

from . import _library  # noqa: F401  (the op schemas, before anything calls them)
from .gem_pool import gem_pool
from .mrf_viterbi import alignment_segments, crf_viterbi, mrf_viterbi
from .sampled_sigmoid_loss import sampled_sigmoid_loss

__all__ = ["gem_pool", "sampled_sigmoid_loss", "mrf_viterbi", "crf_viterbi", "alignment_segments"]
