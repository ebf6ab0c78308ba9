"""The text branch: a deep ResNet over word vectors (registered backbone ``textcnn``).

Follows the authors' MatConvNet text net: token ids padded to a fixed window L (32) → word
embedding (300-d; the authors' first layer is a 1×1 conv over one-hot words, i.e. an
embedding) → BN (no ReLU) → four stages of bottleneck blocks whose middle conv is 1×2 (two
words, left-padded by one so the length is kept) → average pool over the sentence → FC → BN →
ReLU → dropout.

Defaults, as in the authors' net: stage widths 256 / 512 / 1024 / 2048 with 3 / 4 / 6 / 1
blocks; stage strides 1 / 2 / 2 / 1 (L 32 → 32 → 16 → 8 → 8), the stride sitting in the first
1×1 conv of each stage's projection block (ResNet v1, as MatConvNet's resnet-50); bottleneck
width = stage width / 4; FC 2048 → 2048. Depth and width are knobs (the demo uses a small net).
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed.data import Vocab

from .word2vec import vocab_vectors


class Bottleneck(nn.Module):
    """1×1 reduce (stride s) → 1×2 conv → 1×1 expand, BN after each, residual add, ReLU."""

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        mid = max(width // 4, 1)
        self.reduce = nn.Sequential(nn.Conv1d(c_in, mid, 1, stride=stride, bias=False),
                                    nn.BatchNorm1d(mid), nn.ReLU(inplace=True))
        self.conv = nn.Conv1d(mid, mid, 2, bias=False)     # two words; padded on the left only
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

    Args:
      vocab_size: number of token ids (``<pad>`` = 0 included); default: the size of the
        vocabulary in ``vocab_path``.
      max_len: the window L the tokens must fit (the model pads/places them; L=32).
      word_dim: word vector size (300 for word2vec).
      widths, blocks, strides: per stage output width, bottleneck count and stride.
      fc_dim: output size (the joint space: must equal the image branch's).
      dropout: after the final FC-BN-ReLU.
      word2vec_path: local word2vec file (text or binary format) to initialise the embedding;
        needs ``vocab_path``. Give ``text.embed.*`` an LR multiplier of 1e-3 in the recipe then.
      vocab_path: the dataset's vocabulary (a fusedembed Vocab JSON, which the plugin's
        datasets write at their ``vocab_path``): ids to words.
    """

    def __init__(self, vocab_size: Optional[int] = None, max_len: int = 32, word_dim: int = 300,
                 widths: Sequence[int] = (256, 512, 1024, 2048), blocks: Sequence[int] = (3, 4, 6, 1),
                 strides: Sequence[int] = (1, 2, 2, 1), fc_dim: int = 2048, dropout: float = 0.5,
                 word2vec_path: Optional[str] = None, vocab_path: Optional[str] = None):
        super().__init__()
        if vocab_size is None:
            if not vocab_path:
                raise ValueError("textcnn: give vocab_size or vocab_path, got neither")
            vocab_size = len(Vocab.load(vocab_path))
        if vocab_size < 2:
            raise ValueError(f"textcnn: vocab_size must be >= 2 (<pad> and <unk>), got {vocab_size}")
        if max_len < 1:
            raise ValueError(f"textcnn: max_len must be >= 1, got {max_len}")
        if not (len(widths) == len(blocks) == len(strides)) or not widths:
            raise ValueError(f"textcnn: widths, blocks and strides must have one entry per stage, got "
                             f"{list(widths)}, {list(blocks)}, {list(strides)}")
        if min(blocks) < 1 or min(widths) < 1 or min(strides) < 1:
            raise ValueError(f"textcnn: widths, blocks and strides must be >= 1, got {list(widths)}, "
                             f"{list(blocks)}, {list(strides)}")
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
        for width, count, stride in zip(widths, blocks, strides):
            for b in range(count):
                layers.append(Bottleneck(c_in, width, stride if b == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in, fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout))
        self.out_dim = fc_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"textcnn: tokens must be (B, L), got shape {tuple(tokens.shape)}")
        x = self.embed_bn(self.embed(tokens).transpose(1, 2))         # (B, word_dim, L)
        return self.head(self.blocks(x).mean(2))
