"""The text branch: a deep ResNet over word vectors (registered backbone ``textcnn``).

The authors' MatConvNet text net (``coco_word2_pool.m``; Flickr30k and CUHK-PEDES the same):
token ids in a window of L words (32; CUHK-PEDES 56) → word embedding (300-d; the authors'
first layer is a 1×1 conv over one-hot words, i.e. an embedding) → BN (no ReLU) → 14
bottleneck blocks (1×1 → 1×2 conv over a word and its left neighbour, left-padded by one → 1×1,
BN after each, residual add, ReLU) → average pool over the positions → FC without bias → BN →
ReLU → dropout.

Defaults, as in the authors' net (in → mid → out):

- stage 1: block 1 300 → 128 → 128 → 256 (projection shortcut), blocks 2–3 256 → 64 → 256;
- stage 2: block 4 256 → 512 → 512 → 512 with stride 2 **in the 1×2 conv** (and the 1×1
  shortcut), blocks 5–7 512 → 128 → 512;
- stage 3: block 8 512 → 1024 → 1024 → 1024, stride 2 likewise, blocks 9–13 1024 → 256 → 1024;
- stage 4: block 14 1024 → 2048 → 2048 → 2048 (projection shortcut);
- FC 2048 → 2048. L 32 → 16 → 8; 30,245,376 conv weights after the word layer.

So a stage's first block has its own bottleneck width (``first_mids``), the others width / 4.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed.data import Vocab

from .word2vec import vocab_vectors


class Bottleneck(nn.Module):
    """1×1 → 1×2 conv (stride s) → 1×1, BN after each, residual add (1×1/s projection when the
    shape changes), ReLU."""

    def __init__(self, c_in: int, mid: int, width: int, stride: int = 1):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv1d(c_in, mid, 1, bias=False), nn.BatchNorm1d(mid), nn.ReLU(inplace=True))
        # Two words, padded on the left only; the stride here keeps every word on the residual path.
        self.conv = nn.Conv1d(mid, mid, 2, stride=stride, bias=False)
        self.bn = nn.BatchNorm1d(mid)
        self.expand = nn.Sequential(nn.Conv1d(mid, width, 1, bias=False), nn.BatchNorm1d(width))
        self.project = (nn.Sequential(nn.Conv1d(c_in, width, 1, stride=stride, bias=False),
                                      nn.BatchNorm1d(width))
                        if stride != 1 or c_in != width else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        y = F.relu(self.bn(self.conv(F.pad(y, (1, 0)))), inplace=True)
        y = self.expand(y)
        return F.relu(y + (x if self.project is None else self.project(x)), inplace=True)


class TextCNN(nn.Module):
    """Dual-path TextCNN: token ids (B, L) → sentence features (B, fc_dim).

    ``forward`` gives the training output (after dropout); ``features`` the FC's BN output and
    its ReLU (the authors compare the BN output at test time, and rank the ReLU output).

    Args:
      vocab_size: number of token ids (``<pad>`` = 0 included); default: the size of the
        vocabulary in ``vocab_path``.
      max_len: the window L the tokens must fit (the model pads/places them; 32, CUHK-PEDES 56).
      word_dim: word vector size (300 for word2vec).
      widths, blocks, strides: per stage output width, bottleneck count and stride.
      first_mids: bottleneck width of each stage's first block (the authors' 128 / 512 / 1024 /
        2048); null: width / 4 like the other blocks.
      fc_dim: output size (the joint space: must equal the image branch's).
      dropout: after the final FC-BN-ReLU (Flickr30k 0.75, COCO 0.5, CUHK-PEDES 0.8).
      word2vec_path: local word2vec file (text or binary format) to initialise the embedding;
        needs ``vocab_path``. Give ``text.embed.*`` an LR multiplier of 1e-3 in the recipe then.
      vocab_path: the dataset's vocabulary (a fusedembed Vocab JSON, which the plugin's
        datasets write at their ``vocab_path``): ids to words.
    """

    def __init__(self, vocab_size: Optional[int] = None, max_len: int = 32, word_dim: int = 300,
                 widths: Sequence[int] = (256, 512, 1024, 2048), blocks: Sequence[int] = (3, 4, 6, 1),
                 strides: Sequence[int] = (1, 2, 2, 1),
                 first_mids: Optional[Sequence[int]] = (128, 512, 1024, 2048), fc_dim: int = 2048,
                 dropout: float = 0.5, word2vec_path: Optional[str] = None, vocab_path: Optional[str] = None):
        super().__init__()
        if vocab_size is None:
            if not vocab_path:
                raise ValueError("textcnn: give vocab_size or vocab_path, got neither")
            vocab_size = len(Vocab.load(vocab_path))
        if vocab_size < 2:
            raise ValueError(f"textcnn: vocab_size must be >= 2 (<pad> and one word), got {vocab_size}")
        if max_len < 1:
            raise ValueError(f"textcnn: max_len must be >= 1, got {max_len}")
        mids = [w // 4 for w in widths] if first_mids is None else list(first_mids)
        if not (len(widths) == len(blocks) == len(strides) == len(mids)) or not widths:
            raise ValueError(f"textcnn: widths, blocks, strides and first_mids must have one entry per stage, got "
                             f"{list(widths)}, {list(blocks)}, {list(strides)}, {first_mids}")
        if min(blocks) < 1 or min(widths) < 4 or min(strides) < 1 or min(mids) < 1:
            raise ValueError(f"textcnn: blocks, strides and first_mids must be >= 1 and widths >= 4, got "
                             f"{list(widths)}, {list(blocks)}, {list(strides)}, {mids}")
        if not 0 <= dropout < 1:
            raise ValueError(f"textcnn: dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.max_len = vocab_size, max_len
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        if word2vec_path:
            if not vocab_path:
                raise ValueError("textcnn: word2vec_path needs vocab_path (the ids' words), got none")
            with torch.no_grad():
                self.embed.weight.copy_(vocab_vectors(word2vec_path, vocab_path, vocab_size, word_dim))
        self.embed_bn = nn.BatchNorm1d(word_dim)
        layers, c_in = [], word_dim
        for width, count, stride, mid in zip(widths, blocks, strides, mids):
            for b in range(count):
                layers.append(Bottleneck(c_in, mid if b == 0 else width // 4, width, stride if b == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, fc_dim, bias=False)      # fc5_2: no bias, a BN follows
        self.fc_bn = nn.BatchNorm1d(fc_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = fc_dim

    def features(self, tokens: torch.Tensor) -> tuple:
        """``(bn, relu)``: the FC's BN output and its ReLU, (B, fc_dim) each, before dropout."""
        if tokens.dim() != 2:
            raise ValueError(f"textcnn: tokens must be (B, L), got shape {tuple(tokens.shape)}")
        x = self.embed_bn(self.embed(tokens).transpose(1, 2))         # (B, word_dim, L)
        bn = self.fc_bn(self.fc(self.blocks(x).mean(2)))
        return bn, F.relu(bn)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.features(tokens)[1])
