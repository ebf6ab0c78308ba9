import math
from typing import Optional, Union

import torch
from torch import nn

from ..ops.sampled_sigmoid_loss import _check_scalars, sampled_sigmoid_loss, sampled_sigmoid_loss_counts

_MODES = ("paper", "code")


class SampledWeightedSigmoidLoss(nn.Module):
    """Tencent ML-Images' weighted sigmoid loss with its per-class state, in either form.

    ``mode="paper"`` (Wu et al., 2019): class j's weight is ``decay ** (t_j - 1)`` with t_j the
    run length of its state (has a positive / has none) over consecutive training batches, this
    batch included (t = 1 when the state flips). A class with a positive keeps its positives
    and each negative with probability min(1, neg_ratio * npos / nneg); a class without one keeps
    its column with probability ``empty_keep``.

    ``mode="code"`` (the released train.py): a class with a positive has t_j += 1 (else reset to
    0) and weight max(1 - log10(t_j + 0.01), 0.01), no negative sampling; a class without one is
    selected with probability ``neg_select``, its n_j += 1 when selected (reset when the class
    has a positive), weight g(n_j) = 1 - log10(8 + n_j) if > 0.01 else 0.001; unselected columns
    contribute nothing.

    Loss: sum over classes of the weighted, masked cross-entropy, mean over the batch
    (``reduction="mean_classes"`` also divides by C). See ``fusedembed.ops.sampled_sigmoid_loss``.

    State: the counters are buffers (in state_dict), the random stream (a torch.Generator and the
    step count) is the module's extra state, so a run resumes exactly. Counters and stream advance
    only in training mode; in eval mode the weights are those this batch would get and the draws
    use a fixed (seed, offset), so the validation loss is deterministic.

    Distributed: when torch.distributed is initialized with more than one rank (and
    ``distributed`` is not False), the per-class counts are all-reduced before the class
    decisions, the random stream is taken from rank 0 on the first training step, and rank r
    draws rows r * B .. r * B + B - 1 of the global batch (B the local batch size, assumed equal
    on all ranks): the decisions are those of one process holding the whole batch.
    """

    def __init__(self, num_classes: int, mode: str = "paper", *, pos_weight: Union[float, torch.Tensor] = 12.0,
                 pos_threshold: float = 0.7, neg_ratio: Optional[float] = 5.0, empty_keep: float = 0.1,
                 decay: float = 0.9, neg_select: float = 0.3, reduction: str = "mean", seed: Optional[int] = None,
                 distributed: Optional[bool] = None):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SampledWeightedSigmoidLoss: num_classes must be an int >= 1, got {num_classes!r}")
        if mode not in _MODES:
            raise ValueError(f"SampledWeightedSigmoidLoss: mode must be 'paper' or 'code', got {mode!r}")
        if reduction not in ("mean", "mean_classes"):
            raise ValueError(f"SampledWeightedSigmoidLoss: reduction must be 'mean' or 'mean_classes', got {reduction!r}")
        if not (math.isfinite(decay) and 0 < decay <= 1):
            raise ValueError(f"SampledWeightedSigmoidLoss: decay must be in (0, 1], got {decay}")
        if not 0 <= neg_select <= 1:
            raise ValueError(f"SampledWeightedSigmoidLoss: neg_select must be a probability in [0, 1], got {neg_select}")
        if mode == "paper":
            _check_scalars(pos_threshold, neg_ratio, empty_keep, 0, 0, 0, reduction)
        else:
            _check_scalars(pos_threshold, None, neg_select, 0, 0, 0, reduction)
        self.num_classes = num_classes
        self.mode = mode
        self.pos_threshold = pos_threshold
        self.reduction = reduction
        self.distributed = distributed
        if mode == "paper":
            self.neg_ratio, self.empty_keep, self.decay = neg_ratio, empty_keep, decay
            self.register_buffer("run_length", torch.zeros(num_classes, dtype=torch.int64))
            # 1: had a positive in the last training batch, 0: had none, -1: no batch seen yet.
            self.register_buffer("last_state", torch.full((num_classes,), -1, dtype=torch.int8))
        else:
            self.neg_ratio, self.empty_keep, self.decay = None, neg_select, None
            self.register_buffer("pos_count", torch.zeros(num_classes, dtype=torch.int64))
            self.register_buffer("neg_count", torch.zeros(num_classes, dtype=torch.int64))
        if isinstance(pos_weight, torch.Tensor):
            self.register_buffer("pos_weight", pos_weight.detach().clone().float())
        else:
            self.pos_weight = float(pos_weight)
        if seed is None:  # from the global RNG, so torch.manual_seed makes runs repeatable
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
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

    # -- the rules ---------------------------------------------------------------------------
    def candidate_weights(self) -> torch.Tensor:
        """(2, C) float32: each class's weight for this batch if it has a positive (row 0) or has
        none (row 1), from the state before the batch."""
        if self.mode == "paper":
            t, last = self.run_length, self.last_state
            run_pos = torch.where(last == 1, t + 1, 1)
            run_empty = torch.where(last == 0, t + 1, 1)
            runs = torch.stack([run_pos, run_empty]).to(torch.float64)
            return torch.pow(self.decay, runs - 1).float()
        t_next = (self.pos_count + 1).to(torch.float64)
        w_pos = torch.clamp(1 - torch.log10(t_next + 0.01), min=0.01)
        g = 1 - torch.log10(8 + (self.neg_count + 1).to(torch.float64))
        w_empty = torch.where(g > 0.01, g, 0.001)
        return torch.stack([w_pos, w_empty]).float()

    @torch.no_grad()
    def _update(self, has_pos: torch.Tensor, kept: torch.Tensor) -> None:
        if self.mode == "paper":
            state = has_pos.to(torch.int8)
            self.run_length.copy_(torch.where(state == self.last_state, self.run_length + 1, 1))
            self.last_state.copy_(state)
        else:
            selected = kept & ~has_pos
            self.pos_count.copy_(torch.where(has_pos, self.pos_count + 1, 0))
            self.neg_count.copy_(torch.where(has_pos, 0, self.neg_count + selected.to(torch.int64)))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"SampledWeightedSigmoidLoss: logits must be (B, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        dist = self._dist()
        counts = sampled_sigmoid_loss_counts(targets, self.pos_threshold)
        row_start = 0
        if dist is not None:
            dist.all_reduce(counts)
            row_start = dist.get_rank() * logits.shape[0]
        if self.training:
            seed, offset = self._next_stream(logits.device, dist)
        else:
            seed, offset = self._eval_seed, 0
        pos_weight = self.pos_weight
        loss, counts, kept = sampled_sigmoid_loss(
            logits, targets, self.candidate_weights(), pos_weight=pos_weight, pos_threshold=self.pos_threshold,
            neg_ratio=self.neg_ratio, empty_keep=self.empty_keep, seed=seed, offset=offset,
            reduction=self.reduction, counts=counts, row_start=row_start, return_stats=True)
        if self.training:
            self._update(counts[0] > 0, kept)
        return loss

    def extra_repr(self) -> str:
        if self.mode == "paper":
            rules = f"decay={self.decay}, neg_ratio={self.neg_ratio}, empty_keep={self.empty_keep}"
        else:
            rules = f"neg_select={self.empty_keep}"
        return f"num_classes={self.num_classes}, mode={self.mode!r}, {rules}, reduction={self.reduction!r}"
