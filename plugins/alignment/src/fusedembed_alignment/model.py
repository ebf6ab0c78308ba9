"""Regions x BRNN words in one h-d space (Karpathy & Fei-Fei 2015, Section 3.1).

Regions: the whole image plus up to ``max_boxes`` boxes from the batch (``boxes`` (B, K, 4) in
pixels, ``num_objects`` (B,)), each embedded as ``v = W_m CNN(I_b) + b_m``. ``region_mode``:

- ``"crop"`` (the paper): every box is cut out of the image, resized to ``crop_size`` and run
  through the backbone (one batched backbone call over all regions of the batch);
- ``"roi"`` (fast): the backbone's feature map is computed once per image and each region is
  RoIAlign-pooled from it (``torchvision.ops.roi_align``); the backbone must expose its
  convolutional trunk (``features``, as tiny_cnn / AlexNet / VGG do, or a torchvision ResNet).

Words: the BRNN of eq. 2-6, ``x_t = W_w 1_t`` (fixed word2vec vectors when ``word2vec_path``
is given), ``e_t = relu(W_e x_t + b_e)``, a forward and a backward ReLU RNN over the true
length of each padded sentence, ``s_t = relu(W_d (h_f_t + h_b_t) + b_d)``.

``forward(batch)`` returns ``regions`` (B, 1 + max_boxes, h) and ``num_regions`` (B,) when the
batch has ``image``, ``words`` (B, T, h) and ``lengths`` (B,) when it has ``tokens``.
"""

from typing import Optional

import torch
from torch import nn
from torchvision.ops import roi_align

import fusedembed
from fusedembed.data import Vocab, embedding_matrix
from fusedembed.nn import eval_mode

REGION_MODES = ("crop", "roi")


def _trunk(backbone: nn.Module) -> nn.Module:
    """The part of ``backbone`` that maps images to a (B, C, h, w) feature map."""
    if isinstance(getattr(backbone, "features", None), nn.Module):
        return backbone.features
    if all(hasattr(backbone, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer4")):
        return nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool,
                             backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
    raise ValueError(f"alignment: region_mode 'roi' needs a backbone with a convolutional trunk "
                     f"(a 'features' module or a torchvision ResNet), got {type(backbone).__name__}; "
                     f"use region_mode 'crop'")


def region_boxes(batch: dict, max_boxes: int, image_size) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1 + max_boxes, 4) boxes, the whole image first, then the batch's first ``max_boxes``
    boxes (zeros past them), and (B,) the number of regions of each image."""
    B = batch["image"].shape[0]
    H, W = image_size
    device = batch["image"].device
    out = torch.zeros(B, 1 + max_boxes, 4, device=device)
    out[:, 0] = torch.tensor([0.0, 0.0, W, H], device=device)
    count = torch.ones(B, dtype=torch.long, device=device)
    boxes = batch.get("boxes")
    if boxes is not None and max_boxes > 0:
        k = min(max_boxes, boxes.shape[1])
        n = batch.get("num_objects", torch.full((B,), boxes.shape[1], device=device))
        n = n.to(device).clamp(max=k)
        keep = torch.arange(k, device=device)[None, :] < n[:, None]
        out[:, 1:1 + k] = boxes[:, :k].to(out.dtype) * keep[..., None]
        count = count + n
    return out, count


class BRNN(nn.Module):
    """Bidirectional ReLU RNN over padded sentences (B, T) of token ids -> (B, T, hidden).
    ``recurrent=False`` drops the two RNNs (s_t = relu(W_d e_t)): every word is scored alone,
    the bag-of-words ablation."""

    def __init__(self, vocab_size: int, hidden: int, word_dim: int = 300, dropout: float = 0.5,
                 word_vectors: Optional[torch.Tensor] = None, recurrent: bool = True):
        super().__init__()
        if vocab_size < 2 or hidden < 1 or word_dim < 1:
            raise ValueError(f"alignment BRNN: vocab_size must be >= 2, hidden and word_dim >= 1, got "
                             f"{vocab_size}, {hidden}, {word_dim}")
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        if word_vectors is not None:
            if tuple(word_vectors.shape) != (vocab_size, word_dim):
                raise ValueError(f"alignment BRNN: word vectors must be ({vocab_size}, {word_dim}), "
                                 f"got {list(word_vectors.shape)}")
            self.embed.weight.data.copy_(word_vectors)
            self.embed.weight.requires_grad_(False)    # the paper keeps word2vec fixed
        self.W_e = nn.Linear(word_dim, hidden)
        if recurrent:
            self.W_f = nn.Linear(hidden, hidden)
            self.W_b = nn.Linear(hidden, hidden)
        self.W_d = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.hidden, self.recurrent = hidden, recurrent

    def _run(self, e: torch.Tensor, cell: nn.Linear) -> torch.Tensor:
        h = e.new_zeros(e.shape[0], self.hidden)
        out = []
        for t in range(e.shape[1]):   # over time steps; every sentence of the batch at once
            h = torch.relu(e[:, t] + cell(h))
            out.append(h)
        return torch.stack(out, 1)

    def forward(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T = tokens.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=tokens.device)
        lengths = lengths.to(tokens.device)
        e = torch.relu(self.W_e(self.drop(self.embed(tokens))))
        if not self.recurrent:      # the bag-of-words ablation: each word on its own
            return torch.relu(self.W_d(self.drop(e)))
        h_f = self._run(e, self.W_f)
        # Backward direction from each sentence's own last word: reverse the first lengths[b]
        # positions (padding stays in place), run forward, reverse back.
        t = torch.arange(T, device=tokens.device)[None, :]
        rev = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
        idx = rev[..., None].expand(B, T, self.hidden)
        h_b = self._run(e.gather(1, idx), self.W_b).gather(1, idx)
        return torch.relu(self.W_d(self.drop(h_f + h_b)))


class AlignmentModel(nn.Module):
    """Image regions and sentence words in one ``hidden``-d space; scored by
    :func:`fusedembed_alignment.score.alignment_scores`.

    Args:
      backbone: the image CNN (a registered backbone config).
      vocab_size: token ids of the dataset's vocabulary (``<pad>`` = 0 included); read from
        ``vocab_path`` when that is given.
      hidden: h, the joint space (the paper: 1000-1600).
      word_dim: size of x_t (300: word2vec).
      region_mode: "crop" or "roi" (see the module docstring).
      max_boxes: boxes per image besides the whole image (the paper: 19).
      crop_size: side the crops are resized to ("crop").
      roi_size: RoIAlign output side ("roi"), average-pooled to one vector.
      dropout: on the CNN features, the word vectors and the BRNN output layer's input (all
        but the recurrent connections).
      word2vec_path, vocab_path: a local word2vec file and the vocabulary (``Vocab.save``)
        whose ids the tokens are: x_t is then fixed to those vectors.
    """

    def __init__(self, backbone: fusedembed.spec("backbone"), vocab_size: Optional[int] = None, hidden: int = 1000,
                 word_dim: int = 300, region_mode: str = "roi", max_boxes: int = 19,
                 crop_size: int = 64, roi_size: int = 3, dropout: float = 0.5,
                 word2vec_path: Optional[str] = None, vocab_path: Optional[str] = None,
                 recurrent: bool = True):
        super().__init__()
        if region_mode not in REGION_MODES:
            raise ValueError(f"alignment: region_mode must be one of {REGION_MODES}, got {region_mode!r}")
        if max_boxes < 0 or crop_size < 1 or roi_size < 1:
            raise ValueError(f"alignment: max_boxes must be >= 0, crop_size and roi_size >= 1, got "
                             f"{max_boxes}, {crop_size}, {roi_size}")
        if (word2vec_path is None) != (vocab_path is None):
            raise ValueError("alignment: word2vec_path and vocab_path go together (the vectors are "
                             f"looked up by the vocabulary's words), got word2vec_path={word2vec_path!r}, "
                             f"vocab_path={vocab_path!r}")
        cnn = fusedembed.build("backbone", backbone)
        self.region_mode, self.max_boxes = region_mode, int(max_boxes)
        self.crop_size, self.roi_size = int(crop_size), int(roi_size)
        if region_mode == "roi":
            # Only the trunk is kept: DDP needs every parameter to take part in the loss.
            self.trunk = _trunk(cnn)
            with torch.no_grad(), eval_mode(self.trunk):
                channels = self.trunk(torch.zeros(1, 3, 64, 64)).shape[1]
        else:
            self.backbone = cnn
            channels = cnn.out_dim
        self.W_m = nn.Linear(channels, hidden)
        self.drop = nn.Dropout(dropout)
        vectors = None
        if vocab_path is not None:
            vocab = Vocab.load(vocab_path)
            if vocab_size is not None and vocab_size != len(vocab):
                raise ValueError(f"alignment: vocab_size is {vocab_size} but {vocab_path} holds {len(vocab)} words")
            vocab_size = len(vocab)
            vectors, _ = embedding_matrix(vocab, word2vec_path, word_dim)
        if vocab_size is None:
            raise ValueError("alignment: give vocab_size (the dataset's vocabulary size, <pad> and <unk> "
                             "included) or vocab_path")
        self.brnn = BRNN(vocab_size, hidden, word_dim, dropout, vectors, recurrent)
        self.hidden = hidden

    def encode_regions(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"]
        B, _, H, W = images.shape
        boxes, count = region_boxes(batch, self.max_boxes, (H, W))
        M = boxes.shape[1]
        rois = [b.float() for b in boxes]
        if self.region_mode == "crop":
            crops = roi_align(images.float(), rois, self.crop_size, spatial_scale=1.0, sampling_ratio=2,
                              aligned=True)
            features = self.backbone(crops.to(images.dtype)).reshape(B, M, -1)
        else:
            fmap = self.trunk(images)
            pooled = roi_align(fmap.float(), rois, self.roi_size, spatial_scale=fmap.shape[-1] / W,
                               sampling_ratio=2, aligned=True)
            features = pooled.mean((2, 3)).reshape(B, M, -1).to(fmap.dtype)
        v = self.W_m(self.drop(features))
        # Missing regions are zeros (and masked by num_regions in the score).
        keep = torch.arange(M, device=v.device)[None, :] < count[:, None]
        return v * keep[..., None], count

    def forward(self, batch: dict) -> dict:
        out = {}
        if "image" in batch:
            out["regions"], out["num_regions"] = self.encode_regions(batch)
        if "tokens" in batch:
            lengths = batch.get("lengths")
            out["words"] = self.brnn(batch["tokens"], lengths)
            out["lengths"] = (lengths if lengths is not None else torch.full(
                (batch["tokens"].shape[0],), batch["tokens"].shape[1], dtype=torch.long)).to(out["words"].device)
        return out
