"""The ML-Images loss: a weighting rule (:mod:`.rules`, the paper's or the released code's)
around the core's fused op ``fusedembed.ops.sampled_sigmoid_loss``.

For entry (i, j) with logit z and soft target y (the lists' confidences 0.8/0.9/1 used as
they are; -1 ignores the entry)::

    CE_ij = pos_weight * y * softplus(-z) + (1 - y) * softplus(z)        (tf's weighted CE)
    loss  = sum_j w_j * sum_i m_ij * CE_ij / B                           ("mean": train.py)

with w_j the rule's weight of class j for this batch and m the rule's sampling of the
entries; ``reduction="mean_classes"`` also divides by C, the 1/m of the paper's formula. A
class "has a positive" when some y >= ``pos_threshold`` (train.py's mask_thres 0.7).
"""

from typing import Optional, Union

import torch
from torch import nn

from fusedembed.ops import sampled_sigmoid_loss
from fusedembed.ops.sampled_sigmoid_loss import sampled_sigmoid_loss_counts

from .rules import check_num_classes, check_real, make_rule

_OWNER = "SampledWeightedSigmoidLoss"


class SampledWeightedSigmoidLoss(nn.Module):
    """Tencent ML-Images' weighted sigmoid loss with its per-class state.

    ``mode="paper"`` takes ``decay`` (0.9), ``neg_ratio`` (5) and ``empty_keep`` (0.1);
    ``mode="code"`` takes ``neg_select`` (0.1, train.sh). A keyword of the other mode is an
    error. See :mod:`.rules` for the two rules and :mod:`.loss` for the formula.

    State: the rule's counters are buffers (``rule.*`` in the state dict); the random stream (a
    torch.Generator and the step count) is the module's extra state, so a run resumes exactly.
    Counters and stream advance only in training mode; in eval mode the weights are those this
    batch would get and the draws use a fixed (seed, offset), so a validation loss is
    deterministic.

    Distributed: when torch.distributed is initialized with more than one rank (and
    ``distributed`` is not False), the per-class counts are all-reduced before the class
    decisions, the random stream is taken from rank 0 on the first training step, and rank r
    draws rows r * B .. r * B + B - 1 of the global batch (B the local batch size, equal on all
    ranks): the decisions, and so the counters on every rank, are those of one process
    holding the whole batch.
    """

    def __init__(self, num_classes: int, mode: str = "paper", *, pos_weight: Union[float, torch.Tensor] = 12.0,
                 pos_threshold: float = 0.7, reduction: str = "mean", seed: Optional[int] = None,
                 distributed: Optional[bool] = None, decay: Optional[float] = None,
                 neg_ratio: Optional[float] = None, empty_keep: Optional[float] = None,
                 neg_select: Optional[float] = None):
        super().__init__()
        check_num_classes(_OWNER, num_classes)
        self.rule = make_rule(num_classes, mode, {"decay": decay, "neg_ratio": neg_ratio, "empty_keep": empty_keep,
                                                  "neg_select": neg_select}, _OWNER)
        self.num_classes, self.mode = num_classes, mode
        self.pos_threshold = check_real(_OWNER, "pos_threshold", pos_threshold, 0.0, 1.0, lo_open=True)
        if reduction not in ("mean", "mean_classes"):
            raise ValueError(f"{_OWNER}: reduction must be 'mean' or 'mean_classes', got {reduction!r}")
        self.reduction, self.distributed = reduction, distributed
        if isinstance(pos_weight, torch.Tensor):
            if pos_weight.shape not in ((), (1,), (num_classes,)):
                raise ValueError(f"{_OWNER}: pos_weight must be a number or a ({num_classes},) tensor, got shape "
                                 f"{tuple(pos_weight.shape)}")
            self.register_buffer("pos_weight", pos_weight.detach().clone().float())
        else:
            self.pos_weight = check_real(_OWNER, "pos_weight", pos_weight, 0.0, float("inf"), hi_open=True)
        if seed is None:  # from the global RNG, so torch.manual_seed makes runs repeatable
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"{_OWNER}: seed must be an int in [0, 2^63), got {seed!r}")
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self._eval_seed = seed
        self._stream_synced = False

    # -- state -------------------------------------------------------------------------------
    def get_extra_state(self):
        return {"generator": self.generator.get_state(), "step": self.step}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])

    def _dist(self):
        if self.distributed is False or not torch.distributed.is_available():
            return None
        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() < 2:
            return None
        return torch.distributed

    def _next_stream(self, device: torch.device, dist):
        if dist is not None and not self._stream_synced:
            # One rank's stream for all, so every rank takes the same column decisions.
            state = torch.cat([self.generator.get_state(),
                               torch.tensor([self.step], dtype=torch.int64).view(torch.uint8)]).to(device)
            dist.broadcast(state, src=0)
            state = state.cpu()
            self.generator.set_state(state[:-8].clone())
            self.step = int(state[-8:].clone().view(torch.int64))
            self._stream_synced = True
        seed = int(torch.randint(0, 2**63 - 1, (), generator=self.generator, dtype=torch.int64))
        offset = self.step
        self.step += 1
        return seed, offset

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"{_OWNER}: logits must be (B, {self.num_classes}), got {tuple(logits.shape)}")
        dist = self._dist()
        counts = sampled_sigmoid_loss_counts(targets, self.pos_threshold)
        row_start = 0
        if dist is not None:
            dist.all_reduce(counts)
            row_start = dist.get_rank() * logits.shape[0]
        seed, offset = self._next_stream(logits.device, dist) if self.training else (self._eval_seed, 0)
        loss, counts, kept = sampled_sigmoid_loss(
            logits, targets, self.rule.candidate_weights(), pos_weight=self.pos_weight,
            pos_threshold=self.pos_threshold, seed=seed, offset=offset, reduction=self.reduction, counts=counts,
            row_start=row_start, return_stats=True, **self.rule.sampling)
        if self.training:
            self.rule.update(counts[0] > 0, kept)
        return loss

    def extra_repr(self) -> str:
        pw = "per class" if isinstance(self.pos_weight, torch.Tensor) else self.pos_weight
        return f"mode={self.mode!r}, pos_weight={pw}, pos_threshold={self.pos_threshold}, reduction={self.reduction!r}"
