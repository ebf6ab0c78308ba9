"""The ``torch.ops.fusedembed`` operators: schemas, fake (meta) kernels and autograd, registered
here whether or not ``fusedembed._C`` is built, so every op has one code path.

The compiled extension only adds CPU/CUDA kernels (``TORCH_LIBRARY_IMPL`` in csrc/cpu, csrc/cuda)
and holds every argument check. Without it (not built, or hidden by FUSEDEMBED_NO_EXTENSION=1) the
pure-PyTorch references of ``_reference`` are registered as the CPU and CUDA kernels instead, with
one warning per op; they check nothing beyond what their torch calls do.
"""

import torch

from .._extension import has_extension, warn_reference_fallback
from . import _reference

_lib = torch.library.Library("fusedembed", "DEF")  # kept alive: the schemas live as long as it does

# Generalized-mean pooling over the spatial dims of (B, C, H, W) / (B, C, L): returns (B, C) in the
# accumulation type (float32, float64 for float64 x), so that backward reads an unrounded y.
_lib.define("gem_pool(Tensor x, Tensor p, float eps) -> Tensor")
# Gradients of gem_pool from its output y: (dx or an empty tensor unless x_grad, dp reduced to
# p's shape or an empty tensor unless p_grad).
_lib.define("gem_pool_backward(Tensor grad_y, Tensor x, Tensor p, Tensor y, float eps, bool x_grad, "
            "bool p_grad) -> (Tensor, Tensor)")
# Sampled weighted sigmoid loss, see csrc/ops/sampled_sigmoid_loss.h. Per-class counts of (B, C)
# targets: (2, C) int32, row 0 positives (y >= pos_threshold), row 1 the other entries that are not -1.
_lib.define("sampled_sigmoid_loss_counts(Tensor targets, float pos_threshold) -> Tensor")
# One pass given those counts: (loss, grad_logits or an empty tensor unless compute_grad, kept (C,)
# bool columns). The loss is float32 (float64 for float64 logits), the gradient has the logits'
# dtype. Keep decisions from Philox keyed by (seed, offset, class, row_start + row). The autograd
# backward may rescale grad_logits in place.
_lib.define("sampled_sigmoid_loss(Tensor logits, Tensor targets, Tensor counts, Tensor class_weight, "
            "Tensor pos_weight, float pos_threshold, float? neg_ratio, float empty_keep, int seed, int offset, "
            "int row_start, str reduction, bool compute_grad) -> (Tensor, Tensor, Tensor)")
# Backward of a scalar loss: grad_logits *= grad_loss (1 element) in place, reads nothing when it is 1.
_lib.define("sampled_sigmoid_loss_scale_grad_(Tensor(a!) grad, Tensor grad_loss) -> ()")
# Potts chain-MRF Viterbi over (B, N, M) unaries: the int64 (B, N) assignment (-1 past each length)
# and the (B,) best energy (float64 for float64 unaries, else float32). beta: 1 or B values.
_lib.define("mrf_viterbi(Tensor unary, Tensor beta, Tensor? lengths=None, Tensor? num_regions=None) "
            "-> (Tensor, Tensor)")
# Linear-chain CRF Viterbi, transitions (M, M) or (B, M, M) [from, to]: returns (path, score).
_lib.define("crf_viterbi(Tensor emissions, Tensor transitions, Tensor? lengths=None, Tensor? start=None, "
            "Tensor? end=None) -> (Tensor, Tensor)")


# --- fake kernels: output shapes and dtypes for torch.compile and meta tensors -------------------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fusedembed::gem_pool")
def _gem_pool_fake(x, p, eps):
    torch._check(x.dim() in (3, 4), lambda: f"gem_pool: x must be (B, C, H, W) or (B, C, L), got {x.dim()}-d")
    return x.new_empty((x.shape[0], x.shape[1]), dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("fusedembed::gem_pool_backward")
def _gem_pool_backward_fake(grad_y, x, p, y, eps, x_grad, p_grad):
    dx = torch.empty_like(x) if x_grad else x.new_empty((0,))
    dp = torch.empty_like(p) if p_grad else p.new_empty((0,))
    return dx, dp


@torch.library.register_fake("fusedembed::sampled_sigmoid_loss_counts")
def _counts_fake(targets, pos_threshold):
    torch._check(targets.dim() == 2, lambda: "sampled_sigmoid_loss: targets must be a 2-d (B, C) tensor")
    return targets.new_empty((2, targets.shape[1]), dtype=torch.int32)


@torch.library.register_fake("fusedembed::sampled_sigmoid_loss_scale_grad_")
def _scale_grad_fake(grad, grad_loss):
    return None


@torch.library.register_fake("fusedembed::sampled_sigmoid_loss")
def _loss_fake(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep, seed,
               offset, row_start, reduction, compute_grad):
    torch._check(logits.dim() == 2, lambda: "sampled_sigmoid_loss: logits must be a 2-d (B, C) tensor")
    B, C = logits.shape
    acc = _acc_dtype(logits.dtype)
    loss = logits.new_empty((B, C)) if reduction == "none" else logits.new_empty((), dtype=acc)
    grad = logits.new_empty((B, C)) if compute_grad else logits.new_empty((0,))
    return loss, grad, logits.new_empty((C,), dtype=torch.bool)


def _viterbi_outputs(x):
    B, N = x.shape[0], x.shape[1]
    return x.new_empty((B, N), dtype=torch.long), x.new_empty((B,), dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("fusedembed::mrf_viterbi")
def _mrf_viterbi_fake(unary, beta, lengths=None, num_regions=None):
    torch._check(unary.dim() == 3, lambda: f"mrf_viterbi: unary must be (B, N, M), got {unary.dim()}-d")
    return _viterbi_outputs(unary)


@torch.library.register_fake("fusedembed::crf_viterbi")
def _crf_viterbi_fake(emissions, transitions, lengths=None, start=None, end=None):
    torch._check(emissions.dim() == 3, lambda: f"crf_viterbi: emissions must be (B, N, M), got {emissions.dim()}-d")
    return _viterbi_outputs(emissions)


# --- autograd ------------------------------------------------------------------------------------

def _gem_setup_context(ctx, inputs, output):
    x, p, eps = inputs
    ctx.save_for_backward(x, p, output)
    ctx.eps = eps


def _gem_backward(ctx, grad_y):
    x, p, y = ctx.saved_tensors
    x_grad, p_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dp = torch.ops.fusedembed.gem_pool_backward(grad_y, x, p, y, ctx.eps, x_grad, p_grad)
    return (dx if x_grad else None), (dp if p_grad else None), None


torch.library.register_autograd("fusedembed::gem_pool", _gem_backward, setup_context=_gem_setup_context)


def _ssl_setup_context(ctx, inputs, output):
    _, grad, kept = output
    ctx.compute_grad = inputs[-1]
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(grad, kept)


def _last_reader_of_saved_tensors() -> bool:
    """True in an eager backward that frees the graph after it (no retain_graph): nothing reads the
    saved gradient again, so it may be overwritten."""
    if torch.compiler.is_compiling():
        return False
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is not None and not keep_graph()


def _ssl_backward(ctx, grad_loss, _grad_grad, _grad_kept):
    if not ctx.compute_grad:
        raise RuntimeError("sampled_sigmoid_loss: backward needs the forward call to have compute_grad=True")
    if torch.is_grad_enabled():
        # The saved gradient is a constant: a graph through it would have no second derivative.
        raise RuntimeError("sampled_sigmoid_loss: double backward is not supported (backward with create_graph=True)")
    if not ctx.needs_input_grad[0]:
        return (None,) * 13
    (grad,) = ctx.saved_tensors
    if grad_loss.dim() == 0 and type(grad) is torch.Tensor and _last_reader_of_saved_tensors():
        # The saved gradient becomes d loss / d logits in place: no new (B, C) tensor, and no pass
        # over it at all when grad_loss is 1 (the kernel checks, the host never waits). Only plain
        # eager tensors: tracers (fake, functional) get the out-of-place product.
        torch.ops.fusedembed.sampled_sigmoid_loss_scale_grad_(grad, grad_loss)
        return (grad,) + (None,) * 12
    return ((grad * grad_loss).to(grad.dtype),) + (None,) * 12


torch.library.register_autograd("fusedembed::sampled_sigmoid_loss", _ssl_backward, setup_context=_ssl_setup_context)


# --- the references as kernels when the extension is absent --------------------------------------

def _register_reference(name: str, fn, public: str) -> None:
    def kernel(*args):
        warn_reference_fallback(public)
        return fn(*args)

    for device in ("CPU", "CUDA"):
        _lib.impl(name, kernel, device)


if not has_extension():
    _register_reference("gem_pool", _reference.gem_pool_op, "gem_pool")
    _register_reference("gem_pool_backward", _reference.gem_pool_backward, "gem_pool")
    _register_reference("sampled_sigmoid_loss_counts", _reference.sampled_sigmoid_loss_counts, "sampled_sigmoid_loss")
    _register_reference("sampled_sigmoid_loss", _reference.sampled_sigmoid_loss_op, "sampled_sigmoid_loss")
    _register_reference("sampled_sigmoid_loss_scale_grad_", _reference.sampled_sigmoid_loss_scale_grad_,
                        "sampled_sigmoid_loss")
    _register_reference("mrf_viterbi", _reference.mrf_viterbi, "mrf_viterbi")
    _register_reference("crf_viterbi", _reference.crf_viterbi, "crf_viterbi")
