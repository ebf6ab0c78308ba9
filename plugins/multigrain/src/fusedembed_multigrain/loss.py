"""MultiGrain's margin loss with distance-weighted sampling (``modules/margin.py``, after Wu et
al. 2017, "Sampling matters"), on the device: no numpy, no host round trip per anchor.

Sampling, for unit-norm embeddings x (B, n) and instance ids:

    d_ij = sqrt(|x_i|² + |x_j|² - 2 x_i·x_j + [i = j]),  clamped to d >= cutoff (0.5)
    log w_ij = (2 - n) log d_ij - ((n - 3) / 2) log(1 - d_ij² / 4)
    w_ij = exp(log w_ij - max_j) · [inst_i != inst_j] · [d_ij < nonzero_loss_cutoff (1.4)],
    row-normalised; a row with no valid weight is uniform over the other instances.

The entries with 1 - d²/4 <= 0 (d >= 2, reachable only by rounding) are masked before the
max, so they cannot turn it into NaN as in the release; the max is taken per row over the
valid entries (the same weights after row normalisation, without underflow across rows).
For each anchor i, every pair (i, j) with j another copy of i's instance, each with one
negative: len(same) - 1 negatives drawn from w_i without replacement (Gumbel top-k), with
replacement when w_i has fewer non-zero entries than that (the release's ValueError path).

Loss on the triplets (a, p, n), d = sqrt(Σ(·)² + 1e-8):

    pos = relu(d_ap - β + α),  neg = relu(β - d_an + α),  loss = Σ(pos + neg) / max(pair_cnt, 1)

α = 0.2, β learnable (1.2 at start; the trainer gives the losses' parameters their own
optimiser: recipe ``trainer.loss_lr_mult`` = beta_lr, ``loss_weight_decay`` 0).
``pair_cnt="any"`` counts triplets with an active term (the released PyTorch code, where
bool + bool is a logical OR); ``"terms"`` counts active terms (the original MXNet code).
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed.distributed import all_gather_with_grad, gather_batch

PAIR_COUNTS = ("any", "terms")


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """sqrt(|x_i|² + |x_j|² - 2 x_i·x_j + I), the release's form (the identity avoids sqrt(0))."""
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    return (d2 + torch.eye(len(x), device=x.device, dtype=x.dtype)).sqrt()


def dws_weights(x: torch.Tensor, instance: torch.Tensor, cutoff: float = 0.5,
                nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    """(B, B) negative-sampling distribution of each anchor (rows sum to 1; a row of zeros
    when the batch holds no other instance)."""
    n = x.shape[1]
    d = pairwise_distances(x.detach().float()).clamp_min(cutoff)
    one_minus = 1 - d * d / 4
    log_w = (2 - n) * d.log() - ((n - 3) / 2) * one_minus.clamp_min(torch.finfo(d.dtype).tiny).log()
    other = instance[:, None] != instance[None, :]
    valid = other & (d < nonzero_loss_cutoff) & (one_minus > 0)
    log_w = log_w.masked_fill(~valid, float("-inf"))
    row_max = log_w.amax(1, keepdim=True)
    w = torch.exp(log_w - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)))
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    uniform = other.float() / other.sum(1, keepdim=True).clamp_min(1)
    return torch.where(valid.any(1, keepdim=True), w, uniform)


def distance_weighted_sampling(x: torch.Tensor, instance: torch.Tensor, cutoff: float = 0.5,
                               nonzero_loss_cutoff: float = 1.4, anchors: Optional[torch.Tensor] = None,
                               generator: Optional[torch.Generator] = None
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, p, n) index triplets into the batch. ``anchors``: a (B,) bool mask of the rows that
    may be anchors (the local rows of a global batch); default all."""
    if x.dim() != 2 or instance.shape != (x.shape[0],):
        raise ValueError(f"distance_weighted_sampling: expected x (B, n) and instance (B,), got "
                         f"{tuple(x.shape)} and {tuple(instance.shape)}")
    b = len(x)
    w = dws_weights(x, instance, cutoff, nonzero_loss_cutoff)
    same = instance[:, None] == instance[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=x.device)
    pos_mask = same & ~eye & (w.sum(1, keepdim=True) > 0)
    if anchors is not None:
        pos_mask &= anchors[:, None]
    a, p = pos_mask.nonzero(as_tuple=True)
    if len(a) == 0:
        empty = a.new_zeros(0)
        return empty, empty, empty
    need = pos_mask.sum(1)                              # len(same) - 1 negatives per anchor
    k = int(need.max())                                  # one sync per batch, not per anchor
    # Without replacement: Gumbel top-k over log w (zero weights never drawn).
    u = torch.rand(w.shape, device=w.device, generator=generator).clamp_min(1e-20)
    keys = torch.where(w > 0, w.log() - (-u.log()).log(), torch.full_like(w, float("-inf")))
    drawn = keys.topk(min(k, b), dim=1).indices
    if k > b:
        drawn = torch.cat([drawn, drawn[:, :1].expand(b, k - b)], 1)
    # With replacement where a row has fewer non-zero weights than negatives to draw.
    safe = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    with_repl = torch.multinomial(safe, k, replacement=True, generator=generator)
    negatives = torch.where(((w > 0).sum(1) >= need)[:, None], drawn, with_repl)
    rank = (pos_mask.cumsum(1) - 1)[a, p]
    return a, p, negatives[a, rank]


def _distances(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return ((x[i] - x[j]).pow(2).sum(1) + 1e-8).sqrt()


def margin_loss(x, a, p, n, beta, margin: float = 0.2, pair_cnt: str = "any") -> torch.Tensor:
    """Σ(relu(d_ap - β + α) + relu(β - d_an + α)) / max(pair_cnt, 1) over triplets (a, p, n)."""
    if pair_cnt not in PAIR_COUNTS:
        raise ValueError(f"margin_loss: pair_cnt must be one of {PAIR_COUNTS}, got {pair_cnt!r}")
    pos = F.relu(_distances(x, a, p) - beta + margin)
    neg = F.relu(beta - _distances(x, a, n) + margin)
    active = ((pos > 0) | (neg > 0)).sum() if pair_cnt == "any" else (pos > 0).sum() + (neg > 0).sum()
    return (pos + neg).sum() / active.clamp_min(1)


class MarginLoss(nn.Module):
    """The margin loss on distance-weighted samples of the batch (forward(embedding,
    instance)); ``embedding`` must be the l2-normalised one (the model's ``embedding``).

    Under DDP (``global_sampling``, default), negatives are drawn from the global batch
    (all-gathered, gradients flowing back to their rank) and the anchors are this rank's rows;
    with the repeated-augmentation sampler's default the copies of an image are on one rank.
    A batch without a repeated instance (m = 1) gives 0: the objective is then CE alone.
    """

    def __init__(self, margin: float = 0.2, beta_init: float = 1.2, learn_beta: bool = True,
                 pair_cnt: str = "any", cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 global_sampling: bool = True):
        super().__init__()
        if pair_cnt not in PAIR_COUNTS:
            raise ValueError(f"MarginLoss: pair_cnt must be one of {PAIR_COUNTS}, got {pair_cnt!r}")
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ValueError(f"MarginLoss: need 0 < cutoff < nonzero_loss_cutoff, got {cutoff}, "
                             f"{nonzero_loss_cutoff}")
        beta = torch.tensor(float(beta_init))
        if learn_beta:
            self.beta = nn.Parameter(beta)
        else:
            self.register_buffer("beta", beta)
        self.margin, self.pair_cnt = float(margin), pair_cnt
        self.cutoff, self.nonzero_loss_cutoff = float(cutoff), float(nonzero_loss_cutoff)
        self.global_sampling = global_sampling

    def forward(self, embedding: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        instance = torch.as_tensor(instance, device=embedding.device).reshape(-1)
        x, ids, anchors = embedding, instance, None
        if self.global_sampling:
            x, ids = all_gather_with_grad(embedding), gather_batch(instance)
            if len(x) != len(embedding):      # this rank's rows are the anchors
                sizes = gather_batch(torch.tensor([len(embedding)], device=embedding.device))
                rank = torch.distributed.get_rank()
                start = int(sizes[:rank].sum())
                anchors = torch.zeros(len(x), dtype=torch.bool, device=x.device)
                anchors[start:start + len(embedding)] = True
        a, p, n = distance_weighted_sampling(x, ids, self.cutoff, self.nonzero_loss_cutoff, anchors)
        if len(a) == 0:
            return embedding.sum() * 0.0
        return margin_loss(x.float(), a, p, n, self.beta, self.margin, self.pair_cnt)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, beta={float(self.beta.detach()):.4g}, pair_cnt={self.pair_cnt!r}, "
                f"cutoff={self.cutoff}, nonzero_loss_cutoff={self.nonzero_loss_cutoff}")
