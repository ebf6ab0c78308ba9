"""The multimodal RNN generator of Karpathy & Fei-Fei (CVPR 2015, Section 3.2, eq. 13-15),
registered as model ``alignment/generator``.

    b_v = W_hi CNN(I)
    h_t = f(W_hx x_t + W_hh h_{t-1} + b_h + 1(t=1) * b_v),   f = ReLU, h_0 = 0
    y_t = softmax(W_oh h_t + b_o)

x_1 is the START token, x_{t+1} the word w_t; the targets are w_1 ... w_L then END. START and
END are both id 0 (the vocabulary's ``<pad>``), as in neuraltalk, where word 0 ('.') is both:
no id is added to the dataset's vocabulary, and padding never reaches the loss (it is masked).
``<unk>`` (id 1) is neither fed nor predicted: neuraltalk drops words outside its vocabulary
from the sentence, and decoding never emits it.

Options: ``image_input="every"`` adds b_v at every step (neuraltalk's default,
``rnn_feed_once=0``); ``cell="lstm"`` is neuraltalk's ``lstm_generator``: an LSTM whose first
input is the image vector, then START, then the words (the prediction made at the image step is
discarded). Dropout (inverted, as neuraltalk) on the encoder side (b_v and the word vectors)
and on the decoder side (h_t before W_oh), never on the recurrence.
"""

from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed import build, spec
from fusedembed.data import PAD_ID, UNK_ID, Vocab

END_ID = START_ID = PAD_ID


def drop_unknown(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` (B, T) with every ``<unk>`` removed and the words moved left (order kept),
    and the new lengths."""
    valid = torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]
    keep = valid & (tokens != UNK_ID)
    new_lengths = keep.sum(1)
    # A stable sort of "not kept" moves the kept words to the front in their order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    moved = tokens.gather(1, order)
    width = max(int(new_lengths.max()), 0) if len(tokens) else 0
    moved = moved[:, :width]
    moved = moved.masked_fill(torch.arange(width, device=tokens.device) >= new_lengths[:, None], PAD_ID)
    return moved, new_lengths


class MultimodalRNN(nn.Module):
    """Karpathy & Fei-Fei's multimodal RNN (or neuraltalk's LSTM) sentence generator.

    ``forward(batch)`` reads ``image`` (B, 3, H, W), ``tokens`` (B, T) and ``lengths`` and
    returns ``caption_logits`` (B, T'+1, V) over the steps START..w_T', and ``caption_targets``
    (B, T'+1), the next word at each step (END after the last), -100 where there is none
    (T' is T less the dropped ``<unk>`` words). Decoding: :meth:`generate`.
    """

    def __init__(self, image_backbone: spec("backbone"), vocab_size: Optional[int] = None,
                 vocab_path: Optional[str] = None, hidden: int = 512, word_dim: Optional[int] = None,
                 cell: Literal["rnn", "lstm"] = "rnn", image_input: Literal["first", "every"] = "first",
                 dropout: float = 0.5, max_len: int = 20):
        super().__init__()
        if (vocab_size is None) == (vocab_path is None):
            raise ValueError("generator: give exactly one of vocab_size and vocab_path, got "
                             f"vocab_size={vocab_size}, vocab_path={vocab_path!r}")
        if vocab_path is not None:
            if not Path(vocab_path).expanduser().is_file():
                raise FileNotFoundError(
                    f"generator: vocab_path {vocab_path!r} does not exist; the dataset alignment/generator_karpathy "
                    "writes it when built with the same vocab_path (build the recipe's data.train once), "
                    "or set vocab_size")
            vocab_size = len(Vocab.load(Path(vocab_path).expanduser()))
        if vocab_size < 3:
            raise ValueError(f"generator: vocab_size must be >= 3 (<pad>/END, <unk>, a word), got {vocab_size}")
        if hidden < 1:
            raise ValueError(f"generator: hidden must be >= 1, got {hidden}")
        if cell not in ("rnn", "lstm"):
            raise ValueError(f"generator: cell must be 'rnn' or 'lstm', got {cell!r}")
        if image_input not in ("first", "every"):
            raise ValueError(f"generator: image_input must be 'first' or 'every', got {image_input!r}")
        if cell == "lstm" and image_input != "first":
            raise ValueError("generator: the LSTM reads the image once, as its first input (neuraltalk's "
                             f"lstm_generator); image_input must be 'first', got {image_input!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"generator: dropout must be in [0, 1), got {dropout}")
        if max_len < 1:
            raise ValueError(f"generator: max_len must be >= 1, got {max_len}")
        word_dim = hidden if word_dim is None else word_dim
        self.vocab_size, self.hidden, self.cell, self.image_input = vocab_size, hidden, cell, image_input
        self.max_len = max_len
        self.cnn = build("backbone", image_backbone)
        self.embed = nn.Embedding(vocab_size, word_dim)                     # x_t = W_w 1_t
        self.drop = nn.Dropout(dropout)
        if cell == "rnn":
            self.image_proj = nn.Linear(self.cnn.out_dim, hidden)           # b_v = W_hi CNN(I)
            self.W_hx = nn.Linear(word_dim, hidden)                          # its bias is b_h
            self.W_hh = nn.Linear(hidden, hidden, bias=False)
        else:
            self.image_proj = nn.Linear(self.cnn.out_dim, word_dim)         # the image as an input vector
            self.lstm = nn.LSTMCell(word_dim, hidden)
        self.W_oh = nn.Linear(hidden, vocab_size)
        with torch.no_grad():                                                # neuraltalk: decoder init x 0.1
            self.W_oh.weight.mul_(0.1)
            self.W_oh.bias.zero_()

    # -- the recurrence -------------------------------------------------------------------
    def image_vector(self, images: torch.Tensor) -> torch.Tensor:
        """b_v (B, hidden) for the RNN, the first input vector (B, word_dim) for the LSTM."""
        return self.drop(self.image_proj(self.cnn(images)))

    def start(self, b_v: torch.Tensor):
        """The state before START: h_0 = 0 (RNN); the LSTM's state after reading the image."""
        zeros = b_v.new_zeros(len(b_v), self.hidden)
        if self.cell == "rnn":
            return zeros
        return self.lstm(b_v, (zeros, zeros))

    def step(self, x: torch.Tensor, state, b_v: torch.Tensor, first: bool):
        """One step from word vectors ``x`` (B, word_dim): (new state, h_t)."""
        if self.cell == "lstm":
            h, c = self.lstm(x, state)
            return (h, c), h
        pre = self.W_hx(x) + self.W_hh(state)
        if first or self.image_input == "every":
            pre = pre + b_v
        h = torch.relu(pre)
        return h, h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.W_oh(self.drop(h))

    # -- training -------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        if "image" not in batch or "tokens" not in batch:
            raise KeyError(f"generator: the batch needs 'image' and 'tokens', got keys {sorted(batch)}")
        tokens = batch["tokens"]
        lengths = batch.get("lengths")
        if lengths is None:
            lengths = (tokens != PAD_ID).sum(1)
        if tokens.numel() and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"generator: token id {int(tokens.max())} is outside vocab_size {self.vocab_size}; "
                             "set model.vocab_size (or vocab_path) to the dataset's vocabulary")
        tokens, lengths = drop_unknown(tokens, lengths.to(tokens.device))
        B, T = tokens.shape
        inputs = torch.cat([tokens.new_full((B, 1), START_ID), tokens], 1)          # START, w_1..w_T
        targets = torch.cat([tokens, tokens.new_full((B, 1), PAD_ID)], 1)           # w_1..w_T, pad
        targets = targets.scatter(1, lengths[:, None], END_ID)                       # END after w_L
        steps = torch.arange(T + 1, device=tokens.device)
        targets = targets.masked_fill(steps > lengths[:, None], -100)
        x = self.drop(self.embed(inputs))
        b_v = self.image_vector(batch["image"])
        state = self.start(b_v)
        hs = []
        for t in range(T + 1):
            state, h = self.step(x[:, t], state, b_v, first=t == 0)
            hs.append(h)
        return {"caption_logits": self.logits(torch.stack(hs, 1)), "caption_targets": targets}

    # -- decoding -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: torch.Tensor, beam_size: int = 1, max_len: Optional[int] = None,
                 length_norm: float = 0.0):
        """Captions for ``images``: (ids (B, max_len) long, END-padded, lengths (B,), log-prob
        (B,)); greedy for ``beam_size`` 1. See :mod:`.decode`."""
        from .decode import beam_search, greedy

        max_len = self.max_len if max_len is None else max_len
        if beam_size == 1:
            return greedy(self, images, max_len)
        return beam_search(self, images, beam_size, max_len, length_norm)


class CaptionNLL(nn.Module):
    """Negative log-likelihood of the caption words and END, summed over the words of a
    sentence and averaged over the sentences (neuraltalk's cost); ``per_word`` averages over
    the words instead. Registered as loss ``alignment/caption_nll``."""

    def __init__(self, per_word: bool = False):
        super().__init__()
        self.per_word = per_word

    def forward(self, caption_logits: torch.Tensor, caption_targets: torch.Tensor) -> torch.Tensor:
        flat = F.cross_entropy(caption_logits.flatten(0, 1).float(), caption_targets.flatten(),
                               ignore_index=-100, reduction="sum")
        if self.per_word:
            return flat / (caption_targets != -100).sum().clamp(min=1)
        return flat / max(len(caption_targets), 1)
