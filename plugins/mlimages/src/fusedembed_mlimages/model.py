"""The ML-Images classifier: a registered image backbone (the pre-activation ResNet-101 in the
full recipes), then one fully connected layer (``fc``: 11,166 sigmoid outputs for ML-Images,
1,000 softmax outputs after transfer), initialised as tf.layers.dense (Glorot uniform, zero
bias).

``forward(batch)`` -> ``features`` (the trunk's pooled output), ``embedding`` (its L2-normalised
copy, the vector other recipes retrieve with) and ``logits``. ``pretrained_path`` loads the
whole model, head included (a converted release: trunk keys + ``fc.*``; or an exported /
trained model: ``backbone.*`` + ``fc.*``); a backbone's own ``pretrained_path`` loads the trunk
alone (the transfer: a new head).
"""

from typing import Optional

import torch.nn.functional as F
from torch import nn

from fusedembed import build, spec
from fusedembed.builtin import load_state_dict_file


class MLImagesClassifier(nn.Module):
    def __init__(self, backbone: spec("backbone"), num_classes: int = 11166, pretrained_path: Optional[str] = None,
                 input_key: str = "image"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"mlimages classifier: num_classes must be >= 1, got {num_classes}")
        self.backbone = build("backbone", backbone)
        self.fc = nn.Linear(self.backbone.out_dim, num_classes)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.input_key, self.num_classes, self.out_dim = input_key, num_classes, self.backbone.out_dim
        if pretrained_path:
            self.load_weights(pretrained_path)

    def load_weights(self, path) -> None:
        state = load_state_dict_file(path)
        if not any(k.startswith("backbone.") for k in state):       # a converted release: trunk + fc
            state = {(k if k.startswith("fc.") else f"backbone.{k}"): v for k, v in state.items()}
        own = self.state_dict()
        problems = [f"{what} {items[:5]}{'...' if len(items) > 5 else ''}" for what, items in (
            ("missing", [k for k in own if k not in state]),
            ("unexpected", [k for k in state if k not in own]),
            ("shape (file vs model)", [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                                       if k in own and v.shape != own[k].shape])) if items]
        if problems:
            raise ValueError(f"pretrained_path {str(path)!r} does not match the classifier "
                             f"({self.num_classes} classes): {'; '.join(problems)}")
        self.load_state_dict(state)

    def forward(self, batch) -> dict:
        features = self.backbone(batch[self.input_key])
        return {"features": features, "embedding": F.normalize(features, dim=-1), "logits": self.fc(features)}
