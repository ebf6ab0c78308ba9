"""The dual-path model (registered model ``dualpath``): an image branch and a text branch
mapping into one ``dim``-d space.

``forward(batch)`` encodes what the batch holds: ``image`` (B, 3, H, W) and/or ``tokens``
(B, T) with optional ``lengths``. Outputs: ``image_features`` / ``text_features`` (what the
instance classifier reads) and ``image_embedding`` / ``text_embedding`` (L2-normalised: what
the ranking loss and retrieval compare).

Training: each caption sits at a random offset of the L-slot window (``train_shift``). Eval
(``model.eval()``): the text feature is the sum over all offsets (``test_shift``), the image
feature the sum of the image and its mirror (``test_flip``), then L2-normalised.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed import build, spec

from .image_branch import ImageBranch
from .shift import all_placements, fit_lengths, place, random_offsets


class DualPath(nn.Module):
    def __init__(self, image_backbone: spec("backbone"), text_backbone: spec("backbone"), dim: int = 2048,
                 dropout: float = 0.5, max_len: int = 32, train_shift: bool = True, test_shift: bool = True,
                 test_flip: bool = True):
        super().__init__()
        if max_len < 1:
            raise ValueError(f"dualpath: max_len must be >= 1, got {max_len}")
        self.image = ImageBranch(image_backbone, dim, dropout)
        self.text = build("backbone", text_backbone)
        if self.text.out_dim != dim:
            raise ValueError(f"dualpath: the text backbone's out_dim must equal dim (one shared space and "
                             f"classifier), got out_dim={self.text.out_dim}, dim={dim}")
        text_len = getattr(self.text, "max_len", max_len)
        if text_len != max_len:
            raise ValueError(f"dualpath: max_len ({max_len}) must equal the text backbone's max_len, got {text_len}")
        vocab = getattr(self.text, "vocab_size", None)
        self.vocab_size = vocab
        self.max_len, self.train_shift, self.test_shift, self.test_flip = max_len, train_shift, test_shift, test_flip
        self.out_dim = dim

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.training or not self.test_flip:
            return self.image(images)
        both = self.image(torch.cat([images, images.flip(-1)]))      # one pass for both views
        return both[:len(images)] + both[len(images):]

    def encode_text(self, tokens: torch.Tensor, lengths=None) -> torch.Tensor:
        if self.vocab_size is not None and tokens.numel() and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"dualpath: token id {int(tokens.max())} is outside the text backbone's "
                             f"vocab_size {self.vocab_size}; set text_backbone.vocab_size to the dataset's vocabulary size")
        lengths = fit_lengths(tokens, lengths, self.max_len)
        if self.training:
            offsets = random_offsets(lengths, self.max_len) if self.train_shift else torch.zeros_like(lengths)
            return self.text(place(tokens, lengths, offsets, self.max_len))
        if not self.test_shift:
            return self.text(place(tokens, lengths, torch.zeros_like(lengths), self.max_len))
        placed, owner = all_placements(tokens, lengths, self.max_len)
        feats = self.text(placed)
        return feats.new_zeros(len(tokens), feats.shape[1]).index_add_(0, owner, feats)

    def forward(self, batch: dict) -> dict:
        out = {}
        if "image" in batch:
            out["image_features"] = f = self.encode_image(batch["image"])
            out["image_embedding"] = F.normalize(f.float(), dim=-1)
        if "tokens" in batch:
            out["text_features"] = f = self.encode_text(batch["tokens"], batch.get("lengths"))
            out["text_embedding"] = F.normalize(f.float(), dim=-1)
        if not out:
            raise KeyError(f"dualpath: the batch has neither 'image' nor 'tokens', got keys {sorted(batch)}")
        return out
