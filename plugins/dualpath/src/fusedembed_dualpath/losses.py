"""The two losses of the recipe: ``instance`` and ``bidir_ranking``.

Instance loss
-------------
Every training image is its own class (its captions inherit its label). ONE classifier W
(C × D, optional bias) scores both branches' features; the loss is softmax cross-entropy per
branch, ``image_weight * CE(W f_img, y) + text_weight * CE(W f_txt, y)``.

At COCO scale (C = 113,287 classes, D = 2048) W is 928 MB (885 MiB) in float32, and its
gradient and SGD's momentum as much again: parameters, which no chunking saves. What it saves
are the logits: both branches at B = 128 are N = 256 rows × C = 110 MiB per copy, and plain
``F.cross_entropy`` holds logits and log-softmax in forward and the logits' gradient in
backward. :func:`chunked_cross_entropy` never forms them: its forward streams W in blocks of
``chunk`` classes keeping a running log-sum-exp (N floats), and its backward recomputes each
block's logits, so the transient memory is a few N × chunk blocks and what autograd keeps is x
and the N log-sum-exps.

Measured peak of forward + backward, CPU float32, B = 128 per branch, C = 113,287, D = 2048
(``python -m fusedembed_dualpath.memory``; counts grad W, 885 MiB, and grad x):

=========================  ===========  ==================
cross-entropy              peak (MiB)   beyond grad W
=========================  ===========  ==================
plain ``F.cross_entropy``  1008         123
chunked, chunk=8192        917          32
chunked, chunk=2048        902          17
=========================  ===========  ==================

Analytically: grad W + grad x + one N × C gradient of the logits (plain; its forward also holds
logits and log-softmax, 2 × 110 MiB) or about three N × chunk float blocks (chunked).

Ranking loss
------------
On L2-normalised features, margin m, for each pair i of the batch (same-instance items are
never negatives)::

    max(0, m - s(x_i, y_i) + s(x_i, y⁻)) + max(0, m - s(x_i, y_i) + s(x⁻, y_i))

summed over i (``reduction="sum"``) or averaged (``"mean"``: MatConvNet divides every loss's
gradient by the batch size, so the authors' recipes are mean losses). Negatives:
``"hardest"`` — the hardest in the batch (VSE++'s max of hinges; ours, not the authors');
``"sum"`` — every in-batch negative's hinge summed (VSE0); ``"random"`` — one random in-batch
item of another instance per anchor (the authors' CUHK-PEDES choice, ``rand_diff_class*.m``,
drawn from the batch); ``"candidates"`` — hardest of a FIFO bank of the last K embeddings of
each modality (detached, from a model at most K/B steps old; shuffled batches make them a
random sample) together with the batch's own detached embeddings: ours (the authors'
Flickr30k / COCO negatives are the model's hard-negative mining with ``pair_ranking``).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed.distributed import all_gather_with_grad, gather_batch

REDUCTIONS = ("sum", "mean")


class _ChunkedCE(torch.autograd.Function):
    """Per-row softmax cross-entropy of ``x @ W.T + b`` against ``target``, blocks of
    ``chunk`` classes at a time, logits recomputed in backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, weight, bias, target, chunk):
        n, c = x.shape[0], weight.shape[0]
        run_max = x.new_full((n,), float("-inf"))
        run_sum = x.new_zeros(n)
        for a in range(0, c, chunk):
            z = x @ weight[a:a + chunk].T
            if bias is not None:
                z += bias[a:a + chunk]
            new_max = torch.maximum(run_max, z.max(1).values)
            run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(z - new_max[:, None]).sum(1)
            run_max = new_max
        lse = run_max + torch.log(run_sum)
        picked = (x * weight[target]).sum(1)
        if bias is not None:
            picked = picked + bias[target]
        ctx.save_for_backward(x, weight, bias, target, lse)
        ctx.chunk = chunk
        return lse - picked

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        x, weight, bias, target, lse = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = torch.zeros_like(x) if need_x else None
        # Every chunk of gw and gb is written below, so neither needs zeroing (885 MiB at COCO size).
        gw = torch.empty_like(weight) if need_w else None
        gb = torch.empty_like(bias) if need_b else None
        for a in range(0, weight.shape[0], ctx.chunk):
            w = weight[a:a + ctx.chunk]
            z = x @ w.T
            if bias is not None:
                z += bias[a:a + ctx.chunk]
            p = torch.exp_(z.sub_(lse[:, None])).mul_(grad[:, None])     # d loss / d logits, less one-hot
            if need_x:
                gx.addmm_(p, w)
            if need_w:
                torch.mm(p.T, x, out=gw[a:a + ctx.chunk])
            if need_b:
                gb[a:a + ctx.chunk] = p.sum(0)
        if need_x:
            gx -= grad[:, None] * weight[target]
        if need_w:
            gw.index_add_(0, target, -grad[:, None] * x)
        if need_b:
            gb.index_add_(0, target, -grad)
        return gx, gw, gb, None, None


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                          bias: Optional[torch.Tensor] = None, chunk: int = 8192) -> torch.Tensor:
    """Per-row CE (N,) of the logits ``x @ weight.T + bias`` without materialising them."""
    if chunk < 1:
        raise ValueError(f"chunked_cross_entropy: chunk must be >= 1, got {chunk}")
    if len(target):
        lo, hi = torch.stack(torch.aminmax(target)).tolist()     # one host sync
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(f"instance: labels must be in [0, {weight.shape[0]}) (num_classes), got "
                             f"min {lo}, max {hi}")
    return _ChunkedCE.apply(x, weight, bias, target.long(), chunk)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    return values.sum() if reduction == "sum" else values.mean()


def _check_reduction(who: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


class InstanceLoss(nn.Module):
    """Instance loss: one shared classifier over every training image as its own class.

    Args:
      num_classes: training images (COCO 113,287; Flickr30k 29,783) or identities (CUHK-PEDES).
      dim: feature size of both branches.
      bias: give the classifier a bias (the authors' has none).
      chunk: classes per block of the chunked cross-entropy (bounds the logits' memory).
      image_weight, text_weight: weights of the two branches' CE (Stage II, COCO: 1 and 0.1).
      reduction: "sum" over the batch (MatConvNet's, the authors') or "mean".
    """

    def __init__(self, num_classes: int, dim: int = 2048, bias: bool = False, chunk: int = 8192,
                 image_weight: float = 1.0, text_weight: float = 1.0, reduction: str = "sum",
                 init_std: float = 0.001):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"instance: num_classes must be > 0, got {num_classes}")
        if dim < 1:
            raise ValueError(f"instance: dim must be > 0, got {dim}")
        if chunk < 1:
            raise ValueError(f"instance: chunk must be > 0, got {chunk}")
        _check_reduction("instance", reduction)
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * init_std)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.chunk, self.reduction = chunk, reduction
        self.image_weight, self.text_weight = float(image_weight), float(text_weight)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Full (B, C) logits, for inspection and small C only."""
        return F.linear(features, self.weight, self.bias)

    def forward(self, instance: torch.Tensor, image_features: Optional[torch.Tensor] = None,
                text_features: Optional[torch.Tensor] = None,
                text_instance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``text_instance``: the captions' own labels when they differ from the images' (the
        model's mined hard-negative captions)."""
        text_labels = instance if text_instance is None else text_instance
        parts = [(f, w, y) for f, w, y in ((image_features, self.image_weight, instance),
                                           (text_features, self.text_weight, text_labels))
                 if f is not None and w != 0]
        if not parts:
            raise ValueError("instance: needs image_features or text_features (with a non-zero weight), got neither")
        x = torch.cat([f.float() for f, _, _ in parts])      # both branches in one pass over W
        target = torch.cat([y.to(x.device).long() for _, _, y in parts])
        ce = chunked_cross_entropy(x, self.weight, target, self.bias, self.chunk)
        per_branch = ce.view(len(parts), -1)
        return sum(w * _reduce(row, self.reduction) for row, (_, w, _) in zip(per_branch, parts))


class BidirRankingLoss(nn.Module):
    """Bidirectional ranking loss on L2-normalised embeddings (see the module docstring).

    Args:
      margin: m (the authors: 1).
      negatives: "hardest" (in-batch hardest; = VSE++ max of hinges), "sum" (every in-batch
        negative, VSE0), "random" (one random in-batch item of another instance) or
        "candidates" (hardest of a bank of K past embeddings, no grad).
      num_candidates: K, for "candidates" (the authors: 256).
      dim: embedding size, for "candidates" (sizes the bank).
      reduction: "sum" over the batch (the authors') or "mean".
    """

    NEGATIVES = ("hardest", "sum", "random", "candidates")

    def __init__(self, margin: float = 1.0, negatives: str = "hardest", num_candidates: int = 256,
                 dim: int = 2048, reduction: str = "sum"):
        super().__init__()
        if negatives not in self.NEGATIVES:
            raise ValueError(f"bidir_ranking: negatives must be one of {self.NEGATIVES}, got {negatives!r}")
        if margin < 0:
            raise ValueError(f"bidir_ranking: margin must be >= 0, got {margin}")
        if negatives == "candidates" and num_candidates < 1:
            raise ValueError(f"bidir_ranking: num_candidates must be > 0, got {num_candidates}")
        _check_reduction("bidir_ranking", reduction)
        self.margin, self.negatives, self.reduction = float(margin), negatives, reduction
        k = num_candidates if negatives == "candidates" else 0
        # The bank is state saved with checkpoints, so a resumed run draws the same negatives.
        self.register_buffer("bank_image", torch.zeros(k, dim))
        self.register_buffer("bank_text", torch.zeros(k, dim))
        self.register_buffer("bank_instance", torch.full((k,), -1, dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros((), dtype=torch.long))

    def forward(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor,
                instance: Optional[torch.Tensor] = None) -> torch.Tensor:
        img, txt = image_embedding.float(), text_embedding.float()
        if img.shape != txt.shape:
            raise ValueError(f"bidir_ranking: image and text embeddings must have one shape, got "
                             f"{tuple(img.shape)} and {tuple(txt.shape)}")
        # Under DDP the negatives come from the global batch: every rank computes the loss of
        # all of it, as one process would, and the gradients flow back to each row's rank.
        img, txt = all_gather_with_grad(img), all_gather_with_grad(txt)
        ids = (gather_batch(instance.to(img.device).long()) if instance is not None
               else torch.arange(len(img), device=img.device))
        pos = (img * txt).sum(1)
        if self.negatives == "candidates":
            return self._candidates(img, txt, ids, pos)
        scores = img @ txt.T                                   # [i, j] = s(x_i, y_j)
        same = ids[:, None] == ids[None]
        if self.negatives == "hardest":
            negatives = scores.masked_fill(same, float("-inf"))
            neg_txt = negatives.max(1).values                  # y⁻ for image i
            neg_img = negatives.max(0).values                  # x⁻ for caption i
            cost = F.relu(self.margin - pos + neg_txt) + F.relu(self.margin - pos + neg_img)
        elif self.negatives == "random":
            if bool(same.all()):
                raise ValueError("bidir_ranking: negatives 'random' needs two instances in the batch, got one")
            pick = torch.multinomial((~same).float(), 2, replacement=True)     # [:, 0] caption, [:, 1] image
            rows = torch.arange(len(img), device=img.device)
            cost = (F.relu(self.margin - pos + scores[rows, pick[:, 0]])
                    + F.relu(self.margin - pos + scores[pick[:, 1], rows]))
        else:
            hinge_txt = F.relu(self.margin - pos[:, None] + scores).masked_fill(same, 0).sum(1)
            hinge_img = F.relu(self.margin - pos[None] + scores).masked_fill(same, 0).sum(0)
            cost = hinge_txt + hinge_img
        return _reduce(cost, self.reduction)

    def _candidates(self, img, txt, ids, pos):
        pool_img = torch.cat([img.detach(), self.bank_image])
        pool_txt = torch.cat([txt.detach(), self.bank_text])
        pool_ids = torch.cat([ids, self.bank_instance])
        excluded = (ids[:, None] == pool_ids[None]) | (pool_ids[None] < 0)     # positives, empty slots
        neg_txt = (img @ pool_txt.T).masked_fill(excluded, float("-inf")).max(1).values
        neg_img = (txt @ pool_img.T).masked_fill(excluded, float("-inf")).max(1).values
        cost = F.relu(self.margin - pos + neg_txt) + F.relu(self.margin - pos + neg_img)
        if self.training:
            self._enqueue(img.detach(), txt.detach(), ids)
        return _reduce(cost, self.reduction)

    @torch.no_grad()
    def _enqueue(self, img, txt, ids):
        k = len(self.bank_instance)
        n = min(len(img), k)
        slots = (self.bank_next + torch.arange(n, device=img.device)) % k
        self.bank_image[slots], self.bank_text[slots], self.bank_instance[slots] = img[-n:], txt[-n:], ids[-n:]
        self.bank_next.add_(n).remainder_(k)


class InBatchInstanceLoss(nn.Module):
    """The instance loss of layumi's PyTorch re-ID code (registered ``inbatch_instance``; not the
    MatConvNet recipe's ``instance``): per branch, L2-normalised features f̂ (B, D), logits
    ``gamma · f̂ f̂ᵀ`` (B, B) and cross-entropy against the batch index, so each item is its own
    class within the batch and no C × D classifier exists.

    Args:
      gamma: the logit scale (64, as in pytorch-metric-learning's port).
      image_weight, text_weight: weights of the two branches' terms.
    """

    def __init__(self, gamma: float = 64.0, image_weight: float = 1.0, text_weight: float = 1.0):
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"inbatch_instance: gamma must be > 0, got {gamma}")
        self.gamma, self.image_weight, self.text_weight = float(gamma), float(image_weight), float(text_weight)

    def forward(self, image_features: Optional[torch.Tensor] = None,
                text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = [(f, w) for f, w in ((image_features, self.image_weight), (text_features, self.text_weight))
                 if f is not None and w != 0]
        if not parts:
            raise ValueError("inbatch_instance: needs image_features or text_features (with a non-zero weight), "
                             "got neither")
        total = 0.0
        for f, w in parts:
            f = F.normalize(f.float(), dim=1)
            target = torch.arange(len(f), device=f.device)
            total = total + w * F.cross_entropy(self.gamma * f @ f.T, target)
        return total


class PairRankingLoss(nn.Module):
    """The authors' ``RankLoss.m`` (registered ``pair_ranking``): the batch's first half are
    anchor pairs (x_p, y_p), its second half the negatives (x_n, y_n) of the same positions::

        max(0, m - s(x_p, y_p) + s(x_p, y_n)) + max(0, m - s(x_p, y_p) + s(y_p, x_n))

    summed over the anchors and divided by the whole batch size (``reduction="batch"``:
    MatConvNet's gradient scaling) or just summed (``"sum"``). With the model's hard-negative
    mining (a batch with ``candidate_tokens``) y_n is the hardest candidate caption; x_n is the
    image at that position, a random other image. A negative image of the anchor's instance
    gets no hinge (the authors redraw it).
    """

    def __init__(self, margin: float = 1.0, reduction: str = "batch"):
        super().__init__()
        if margin < 0:
            raise ValueError(f"pair_ranking: margin must be >= 0, got {margin}")
        if reduction not in ("batch", "sum"):
            raise ValueError(f"pair_ranking: reduction must be 'batch' or 'sum', got {reduction!r}")
        self.margin, self.reduction = float(margin), reduction

    def forward(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor,
                instance: Optional[torch.Tensor] = None) -> torch.Tensor:
        img, txt = image_embedding.float(), text_embedding.float()
        if img.shape != txt.shape or len(img) < 2:
            raise ValueError(f"pair_ranking: image and text embeddings must have one shape with at least 2 rows, "
                             f"got {tuple(img.shape)} and {tuple(txt.shape)}")
        n = len(img) // 2
        xp, yp, xn, yn = img[:n], txt[:n], img[n:2 * n], txt[n:2 * n]
        pos = (xp * yp).sum(1)
        to_image = F.relu(self.margin - pos + (yp * xn).sum(1))
        if instance is not None:
            ids = instance.to(img.device).long()
            to_image = to_image.masked_fill(ids[:n] == ids[n:2 * n], 0)
        cost = (F.relu(self.margin - pos + (xp * yn).sum(1)) + to_image).sum()
        return cost / len(img) if self.reduction == "batch" else cost
