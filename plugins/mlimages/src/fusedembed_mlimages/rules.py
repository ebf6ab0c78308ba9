"""The two per-class weighting rules of Tencent ML-Images' loss: the paper's and the released
code's. Each owns its counters (buffers, so they are checkpointed), says which weight every
class would get in the next batch (:meth:`candidate_weights`: row 0 if the class has a
positive in it, row 1 if it has none) and how the kept entries are sampled (:attr:`sampling`,
the arguments of ``fusedembed.ops.sampled_sigmoid_loss``), and advances its counters from what
the batch held (:meth:`update`).

Paper (Wu et al., 2019, Sec. 3.1): class j's state in a batch is 1 when some image has it,
else 0; ``t_j`` is the run length of that state over consecutive batches, this one included
(1 when the state flips) and its weight is ``decay ** (t_j - 1)`` (decay 0.9), whichever the
state. A class with positives keeps them all and samples negatives down to ``neg_ratio`` (5)
per positive; a class without positives is updated with probability ``empty_keep`` (0.1).

Released code (``train.py``, values of ``example/train.sh``): ``pos_count`` counts consecutive
batches with a positive (reset to 0 by a batch without), and such a class weighs
``max(1 - log10(pos_count + 0.01), 0.01)`` with the count after this batch: 0.996, 0.70, 0.52,
…, 0.01 from the 10th batch on; all its negatives are used. A class without positives is
selected with probability ``neg_select`` (0.1 in train.sh; flags.py's default is 0.3); if
selected, ``neg_count`` grows by one and the class weighs ``1 - log10(8 + neg_count)`` when that
exceeds 0.01, else 0.001 (0.0458, then 0.001); unselected, it contributes nothing. A batch with
a positive resets ``neg_count``. Either weight applies to the class's whole column.
"""

import math
from numbers import Real

import torch
from torch import nn

__all__ = ["PaperRule", "ReleasedCodeRule", "RULES", "make_rule"]


def check_real(owner: str, name: str, value, lo: float, hi: float, *, lo_open=False, hi_open=False) -> float:
    """``value`` as a float in the interval; otherwise an error naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{owner}: {name} must be in {interval}, got {value!r}")
    return v


def check_num_classes(owner: str, num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{owner}: num_classes must be an int >= 1, got {num_classes!r}")
    return num_classes


class PaperRule(nn.Module):
    """The paper's rule: run-length weight ``decay ** (t - 1)``, negatives down-sampled to
    ``neg_ratio`` per positive, classes without positives kept with probability ``empty_keep``."""

    mode = "paper"
    params = ("decay", "neg_ratio", "empty_keep")

    def __init__(self, num_classes: int, decay: float = 0.9, neg_ratio: float = 5.0, empty_keep: float = 0.1):
        super().__init__()
        owner = "PaperRule"
        self.num_classes = check_num_classes(owner, num_classes)
        self.decay = check_real(owner, "decay", decay, 0.0, 1.0, lo_open=True)
        self.neg_ratio = check_real(owner, "neg_ratio", neg_ratio, 0.0, math.inf, lo_open=True, hi_open=True)
        self.empty_keep = check_real(owner, "empty_keep", empty_keep, 0.0, 1.0)
        self.register_buffer("run_length", torch.zeros(num_classes, dtype=torch.int64))
        # 1: had a positive in the last training batch, 0: had none, -1: no batch seen yet.
        self.register_buffer("last_state", torch.full((num_classes,), -1, dtype=torch.int8))

    @property
    def sampling(self) -> dict:
        return {"neg_ratio": self.neg_ratio, "empty_keep": self.empty_keep}

    def candidate_weights(self) -> torch.Tensor:
        """(2, C) float32: the weight of each class in the next batch if it has a positive there
        (row 0) or none (row 1)."""
        t, last = self.run_length, self.last_state
        runs = torch.stack([torch.where(last == 1, t + 1, 1), torch.where(last == 0, t + 1, 1)])
        return torch.pow(self.decay, runs.to(torch.float64) - 1).float()

    @torch.no_grad()
    def update(self, has_pos: torch.Tensor, kept: torch.Tensor) -> None:
        """Advances the run lengths by this batch's states (``kept`` plays no part here)."""
        state = has_pos.to(torch.int8)
        self.run_length.copy_(torch.where(state == self.last_state, self.run_length + 1, 1))
        self.last_state.copy_(state)

    def extra_repr(self) -> str:
        return f"{self.num_classes}, decay={self.decay}, neg_ratio={self.neg_ratio}, empty_keep={self.empty_keep}"


class ReleasedCodeRule(nn.Module):
    """The released train.py's rule: log10 run-length weight with floor 0.01 for classes with a
    positive (all their negatives kept), ``neg_select`` Bernoulli selection weighted 0.0458 then
    0.001 for classes without."""

    mode = "code"
    params = ("neg_select",)

    def __init__(self, num_classes: int, neg_select: float = 0.1):
        super().__init__()
        owner = "ReleasedCodeRule"
        self.num_classes = check_num_classes(owner, num_classes)
        self.neg_select = check_real(owner, "neg_select", neg_select, 0.0, 1.0)
        self.register_buffer("pos_count", torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer("neg_count", torch.zeros(num_classes, dtype=torch.int64))

    @property
    def sampling(self) -> dict:
        return {"neg_ratio": None, "empty_keep": self.neg_select}

    def candidate_weights(self) -> torch.Tensor:
        """(2, C) float32: row 0 the weight with this batch's positive counted, row 1 the weight
        of a selected class without one (its neg_count after this batch)."""
        t = (self.pos_count + 1).to(torch.float64)
        w_pos = torch.clamp(1 - torch.log10(t + 0.01), min=0.01)
        g = 1 - torch.log10(8 + (self.neg_count + 1).to(torch.float64))
        w_empty = torch.where(g > 0.01, g, torch.full_like(g, 0.001))
        return torch.stack([w_pos, w_empty]).float()

    @torch.no_grad()
    def update(self, has_pos: torch.Tensor, kept: torch.Tensor) -> None:
        """``has_pos``: (C,) bool, the class had a positive; ``kept``: (C,) bool, its column took
        part (for a class without positives: it was selected)."""
        selected = kept & ~has_pos
        self.pos_count.copy_(torch.where(has_pos, self.pos_count + 1, 0))
        self.neg_count.copy_(torch.where(has_pos, 0, self.neg_count + selected.to(torch.int64)))

    def extra_repr(self) -> str:
        return f"{self.num_classes}, neg_select={self.neg_select}"


RULES = {rule.mode: rule for rule in (PaperRule, ReleasedCodeRule)}


def make_rule(num_classes: int, mode: str, given: dict, owner: str) -> nn.Module:
    """The rule of ``mode`` from the keywords ``given`` (None = not given: the rule's default);
    a keyword of the other mode is an error, not ignored."""
    if mode not in RULES:
        raise ValueError(f"{owner}: mode must be 'paper' or 'code', got {mode!r}")
    rule = RULES[mode]
    for other in RULES.values():
        if other is rule:
            continue
        stray = [k for k in other.params if given.get(k) is not None and k not in rule.params]
        if stray:
            raise ValueError(f"{owner}: {', '.join(stray)} belong{'s' if len(stray) == 1 else ''} to "
                             f"mode {other.mode!r}, not {mode!r} (mode {mode!r} takes: {', '.join(rule.params)})")
    kwargs = {k: given[k] for k in rule.params if given.get(k) is not None}
    return rule(num_classes, **kwargs)
