"""The nearest-neighbour baseline of caption papers: a test image gets a caption of the training
image closest to it in CNN feature space (cosine similarity of the generator's ``cnn``
features, the CNN(I) the model conditions on). Of that neighbour's captions it takes the
consensus one: the caption with the highest mean BLEU-4 against the neighbour's other captions
(Devlin et al. 2015 pick by consensus over several neighbours; one neighbour is the plain
baseline the Karpathy paper's successors report)."""

from typing import Dict, List

import torch
import torch.nn.functional as F

from fusedembed.nn import eval_mode

from .evaluator import references
from .metrics import bleu, ptb_tokenize


@torch.no_grad()
def cnn_features(model, loader, *, device) -> Dict[int, torch.Tensor]:
    """Image index -> L2-normalised CNN feature, once per image of the loader."""
    feats: Dict[int, torch.Tensor] = {}
    with eval_mode(model):
        for batch in loader:
            f = F.normalize(model.cnn(batch["image"].to(device)).float(), dim=-1).cpu()
            for i, row in zip(batch["instance"].tolist(), f):
                feats.setdefault(i, row)
    return feats


def consensus_caption(captions: List[str]) -> str:
    """The caption that agrees best (mean sentence BLEU-4) with the image's other captions."""
    if len(captions) == 1:
        return captions[0]
    toks = [ptb_tokenize(c) for c in captions]

    def agreement(k):
        others = [t for j, t in enumerate(toks) if j != k]
        return bleu({0: others}, {0: toks[k]})[3]

    return captions[max(range(len(captions)), key=lambda k: (agreement(k), -k))]


def nearest_neighbour_captions(model, train_loader, test_loader, *, device) -> Dict[int, str]:
    """Test image index -> the consensus caption of its nearest training image."""
    train = cnn_features(model, train_loader, device=device)
    test = cnn_features(model, test_loader, device=device)
    train_ids = sorted(train)
    bank = torch.stack([train[i] for i in train_ids])
    test_ids = sorted(test)
    nearest = (torch.stack([test[i] for i in test_ids]) @ bank.T).argmax(1).tolist()
    train_refs = references(train_loader.dataset)
    chosen: Dict[int, str] = {}
    out = {}
    for i, n in zip(test_ids, nearest):
        j = train_ids[n]
        if j not in chosen:
            chosen[j] = consensus_caption(train_refs[j])
        out[i] = chosen[j]
    return out
