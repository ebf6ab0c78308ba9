"""The dual-path model (registered model ``dualpath``): an image branch and a text branch
mapping into one ``dim``-d space.

``forward(batch)`` encodes what the batch holds: ``image`` (B, 3, H, W) and/or ``tokens``
(B, T) with optional ``lengths``. Outputs: ``image_features`` / ``text_features`` (what the
instance classifier reads: after dropout in training) and ``image_embedding`` /
``text_embedding`` (L2-normalised post-ReLU features **before** dropout in training, what the
ranking loss compares, as the authors' RankLoss reads ``fc1_1bnx`` / ``fc5_2bnx``).

Eval (``model.eval()``): the feature is ``test_feature`` of each branch, "bn" (the FC's BN
output before ReLU, the authors' ``fc1_1bn`` / ``fc5_2bn``) or "relu" (after it); the text
feature is summed over all offsets (``test_shift``), the image feature over the image and its
mirror (``test_flip``), then L2-normalised. ``test_pool`` reads the image at test: "windows"
(the authors': the head on every ``test_window`` × ``test_window`` stride-1 average window of
the last conv map, MatConvNet's ResNet-50 pool5, summed over space; see
:mod:`.image_branch`) or "global" (the backbone's global pooling, then the head, as in
training). Either takes images of any size, one size per batch (the retrieval evaluator
batches its images by size).

Hard negatives (Flickr30k / COCO, ``cnn_train_dag_batchsize_net.m``): a training batch that
holds ``candidate_tokens`` (B, k, T) and ``candidate_instance`` (B, k) — random captions of
other images, from the datasets' ``candidates_per_item`` — has its second half of captions
replaced: the first half's images and all candidates are embedded by the current model in eval
mode without grad (L2-normalised post-ReLU features), each anchor image i < B/2 takes its
hardest candidate (never one of its own instance), and that caption goes to position
B/2 + i, forwarded with gradient, labelled ``text_instance`` = its own image.

``image_bn_momentum``: the running-statistics momentum of the image CNN's BN layers (null:
PyTorch's 0.1). MatConvNet's BN moments are parameters whose LR is this rate: the authors'
Stage I gives every ResNet-50 parameter LR 0 (0: the statistics stay as loaded, while training
still normalises by the batch), Stage II 0.001 to the BN scales and moments.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed import build, spec
from fusedembed.nn import eval_mode

from .image_branch import ImageBranch, check_window_backbone
from .shift import all_placements, fit_lengths, place, random_offsets

TEST_FEATURES = ("bn", "relu")
TEST_POOLS = ("windows", "global")


class DualPath(nn.Module):
    def __init__(self, image_backbone: spec("backbone"), text_backbone: spec("backbone"), dim: int = 2048,
                 dropout: float = 0.5, max_len: int = 32, train_shift: bool = True, test_shift: bool = True,
                 test_flip: bool = True, test_feature: str = "bn", image_bn_momentum: Optional[float] = None,
                 test_pool: str = "global", test_window: int = 7):
        super().__init__()
        if max_len < 1:
            raise ValueError(f"dualpath: max_len must be >= 1, got {max_len}")
        if image_bn_momentum is not None and not 0 <= image_bn_momentum <= 1:
            raise ValueError(f"dualpath: image_bn_momentum must be in [0, 1] or null, got {image_bn_momentum}")
        if test_feature not in TEST_FEATURES:
            raise ValueError(f"dualpath: test_feature must be one of {TEST_FEATURES}, got {test_feature!r}")
        if test_pool not in TEST_POOLS:
            raise ValueError(f"dualpath: test_pool must be one of {TEST_POOLS}, got {test_pool!r}")
        if test_window < 1:
            raise ValueError(f"dualpath: test_window must be >= 1, got {test_window}")
        self.image = ImageBranch(image_backbone, dim, dropout)
        if test_pool == "windows":
            check_window_backbone(self.image.backbone)
        self.text = build("backbone", text_backbone)
        if not hasattr(self.text, "features"):
            raise TypeError(f"dualpath: the text backbone must give features(tokens) -> (bn, relu) as "
                            f"dualpath/textcnn does, got {type(self.text).__name__}")
        if self.text.out_dim != dim:
            raise ValueError(f"dualpath: the text backbone's out_dim must equal dim (one shared space and "
                             f"classifier), got out_dim={self.text.out_dim}, dim={dim}")
        text_len = getattr(self.text, "max_len", max_len)
        if text_len != max_len:
            raise ValueError(f"dualpath: max_len ({max_len}) must equal the text backbone's max_len, got {text_len}")
        self.vocab_size = getattr(self.text, "vocab_size", None)
        self.max_len, self.train_shift, self.test_shift, self.test_flip = max_len, train_shift, test_shift, test_flip
        self.test_feature, self.test_pool, self.test_window = test_feature, test_pool, test_window
        if image_bn_momentum is not None:
            for m in self.image.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = float(image_bn_momentum)
        self.out_dim = dim

    def _test(self, parts: tuple) -> torch.Tensor:
        return parts[TEST_FEATURES.index(self.test_feature)]

    def _train(self, branch: nn.Module, parts: tuple) -> tuple:
        """(classifier input after dropout, ranking input before it)."""
        return branch.dropout(parts[1]), parts[1]

    def _image_test_parts(self, images: torch.Tensor) -> tuple:
        if self.test_pool == "windows":
            return self.image.window_features(images, self.test_window)
        return self.image.features(images)

    def encode_image(self, images: torch.Tensor):
        """Training: ``(features, pre-dropout features)``; eval: the test feature."""
        if self.training:
            return self._train(self.image, self.image.features(images))
        if not self.test_flip:
            return self._test(self._image_test_parts(images))
        both = self._test(self._image_test_parts(torch.cat([images, images.flip(-1)])))  # one pass, both views
        return both[:len(images)] + both[len(images):]

    def encode_text(self, tokens: torch.Tensor, lengths=None):
        """Training: ``(features, pre-dropout features)``; eval: the test feature."""
        if self.vocab_size is not None and tokens.numel() and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"dualpath: token id {int(tokens.max())} is outside the text backbone's "
                             f"vocab_size {self.vocab_size}; set text_backbone.vocab_size to the dataset's vocabulary size")
        lengths = fit_lengths(tokens, lengths, self.max_len)
        if self.training:
            offsets = random_offsets(lengths, self.max_len) if self.train_shift else torch.zeros_like(lengths)
            return self._train(self.text, self.text.features(place(tokens, lengths, offsets, self.max_len)))
        if not self.test_shift:
            return self._test(self.text.features(place(tokens, lengths, torch.zeros_like(lengths), self.max_len)))
        placed, owner = all_placements(tokens, lengths, self.max_len)
        feats = self._test(self.text.features(placed))
        return feats.new_zeros(len(tokens), feats.shape[1]).index_add_(0, owner, feats)

    def _output(self, out: dict, kind: str, encoded) -> None:
        features, ranked = encoded if self.training else (encoded, encoded)
        out[f"{kind}_features"] = features
        out[f"{kind}_embedding"] = F.normalize(ranked.float(), dim=-1)

    @torch.no_grad()
    def hardest_candidates(self, images: torch.Tensor, instance: torch.Tensor, candidates: torch.Tensor,
                           candidate_instance: torch.Tensor) -> tuple:
        """``(tokens (n, T), instance (n,))``: the hardest candidate caption of each image."""
        with eval_mode(self):                          # the authors mine with net.mode = 'test'
            q = F.normalize(self.image.features(images)[1].float(), dim=1)
            lengths = fit_lengths(candidates, None, self.max_len)
            placed = place(candidates, lengths, random_offsets(lengths, self.max_len), self.max_len)
            c = F.normalize(self.text.features(placed)[1].float(), dim=1)
        scores = (q @ c.T).masked_fill(instance[:, None] == candidate_instance[None], float("-inf"))
        pick = scores.argmax(1)
        return candidates[pick], candidate_instance[pick]

    def _with_hard_negatives(self, batch: dict) -> tuple:
        """The batch's tokens and lengths with the second half mined, and the captions' labels."""
        tokens, instance = batch["tokens"], batch["instance"].to(batch["tokens"].device).long()
        half = len(tokens) // 2
        mined, mined_instance = self.hardest_candidates(
            batch["image"][:half], instance[:half], batch["candidate_tokens"].flatten(0, 1).to(tokens.device),
            batch["candidate_instance"].flatten().to(tokens.device).long())
        width = max(tokens.shape[1], mined.shape[1])
        tokens = F.pad(tokens, (0, width - tokens.shape[1]))
        tokens[half:2 * half] = F.pad(mined, (0, width - mined.shape[1]))
        lengths = fit_lengths(tokens, batch.get("lengths"), self.max_len)
        lengths[half:2 * half] = fit_lengths(mined, None, self.max_len)
        text_instance = instance.clone()
        text_instance[half:2 * half] = mined_instance
        return tokens, lengths, text_instance

    def forward(self, batch: dict) -> dict:
        out = {}
        if self.training and "candidate_tokens" in batch:
            tokens, lengths, out["text_instance"] = self._with_hard_negatives(batch)
            batch = {**batch, "tokens": tokens, "lengths": lengths}
        if "image" in batch:
            self._output(out, "image", self.encode_image(batch["image"]))
        if "tokens" in batch:
            self._output(out, "text", self.encode_text(batch["tokens"], batch.get("lengths")))
        if not out:
            raise KeyError(f"dualpath: the batch has neither 'image' nor 'tokens', got keys {sorted(batch)}")
        return out
