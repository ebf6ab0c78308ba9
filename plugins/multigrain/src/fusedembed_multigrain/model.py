"""The MultiGrain network: a convolutional trunk, GeM pooling with a fixed exponent, an
optional constant-1 channel, a linear classifier on the un-normalised GeM vector, and the
embedding l2n(GeM) (``lib/multigrain.py``). PCA whitening, once fitted
(:mod:`.whiten`), is part of the model: the embedding becomes l2n((l2n([g; 1]) - m) P) and
the classifier is re-parameterised to read the whitened vector with the same argmax.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed.builtin import load_state_dict_file
from fusedembed.nn import GeM

RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
ARCHS = (*RESNETS, "tiny")


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / (||x|| + eps), the release's l2n (eps added to the norm, not under the root)."""
    return x / (x.norm(dim=1, keepdim=True) + eps)


def add_bias_channel(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(x.shape[0], 1)], 1)


def tiny_trunk(width: int = 16, depth: int = 3) -> nn.Module:
    """Stride-2 conv-BN-ReLU stages (a CPU-sized trunk for the demo and tests)."""
    if width < 1 or depth < 1:
        raise ValueError(f"tiny trunk: width and depth must be >= 1, got width={width}, depth={depth}")
    layers, c_in = [], 3
    for i in range(depth):
        c_out = width * 2 ** i
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2 if i else 1, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if i:
            layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        c_in = c_out
    trunk = nn.Sequential(*layers)
    trunk.out_dim = c_in
    return trunk


def resnet_trunk(arch: str, pretrained_path: Optional[str] = None) -> nn.Module:
    """torchvision's ResNet up to layer4 (the feature map), weights from a local file."""
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if pretrained_path:
        state = {k: v for k, v in load_state_dict_file(pretrained_path).items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(f"{pretrained_path} does not match {arch}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    trunk = nn.Sequential(*list(net.children())[:-2])
    trunk.out_dim = RESNETS[arch]
    return trunk


class MultiGrain(nn.Module):
    """forward(batch) -> {"gem": un-normalised GeM vector (with the 1 channel when
    ``add_bias``), "embedding": l2n(gem) (the whitened descriptor once whitening is
    integrated), "logits"}.

    ``p``: GeM exponent (3 in the README recipe; 1 is average pooling, ``inf`` max pooling),
    fixed unless ``learn_p``. ``scales``: the input is also embedded at these relative sizes
    and the GeM vectors combined by the generalised mean with the same p (the multi-scale
    option; (1,) by default).
    """

    def __init__(self, num_classes: int, arch: str = "resnet50", p: float = 3.0, learn_p: bool = False,
                 add_bias: bool = False, pretrained_path: Optional[str] = None, width: int = 16, depth: int = 3,
                 scales: Sequence[float] = (1.0,), input_key: str = "image"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"MultiGrain: arch must be one of {ARCHS}, got {arch!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"MultiGrain: num_classes must be an int >= 1, got {num_classes!r}")
        self.trunk = tiny_trunk(width, depth) if arch == "tiny" else resnet_trunk(arch, pretrained_path)
        # "direct": the p* fine-tuning steps on p itself, as finetune_p.py does.
        self.pool = GeM(p=p, learn_p=learn_p, parametrization="direct")
        self.add_bias, self.input_key = add_bias, input_key
        self.feature_dim = self.trunk.out_dim + int(add_bias)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.set_scales(scales)
        # PCA whitening (empty until integrate_whitening): mean (D+1,) and projection (D+1, D+1)
        # acting on l2n([g; 1]).
        self.register_buffer("whiten_mean", torch.zeros(0))
        self.register_buffer("whiten_proj", torch.zeros(0, 0))

    def set_scales(self, scales: Sequence[float]) -> None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(not (math.isfinite(s) and s > 0) for s in scales):
            raise ValueError(f"MultiGrain: scales must be positive numbers, got {scales}")
        self.scales = scales

    @property
    def whitened(self) -> bool:
        return self.whiten_proj.numel() > 0

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales == (1.0,):
            return self.pool(self.trunk(x))
        p = self.pool.p.detach() if not self.pool.learn_p else self.pool.p
        outs = []
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False,
                                                  antialias=True)
            outs.append(self.pool(self.trunk(xs)))
        g = torch.stack(outs)
        if torch.isinf(p).all():
            return g.amax(0)
        return g.clamp_min(self.pool.eps).pow(p).mean(0).pow(1.0 / p)

    def gem(self, image: torch.Tensor) -> torch.Tensor:
        g = self._pooled(image)
        return add_bias_channel(g) if self.add_bias else g

    def _with_one(self, g: torch.Tensor) -> torch.Tensor:
        """[g; 1] (g already ends with the 1 channel when add_bias)."""
        return g if self.add_bias else add_bias_channel(g)

    def forward(self, batch) -> dict:
        image = batch[self.input_key] if isinstance(batch, dict) else batch
        g = self.gem(image)
        if not self.whitened:
            return {"gem": g, "embedding": l2n(g), "logits": self.classifier(g)}
        z = (l2n(self._with_one(g)) - self.whiten_mean) @ self.whiten_proj
        return {"gem": g, "embedding": l2n(z), "logits": self.classifier(z)}

    @torch.no_grad()
    def whitening_features(self, image: torch.Tensor) -> torch.Tensor:
        """l2n([g; 1]): what the PCA whitening is fitted on."""
        return l2n(self._with_one(self.gem(image)))

    @torch.no_grad()
    def integrate_whitening(self, mean: torch.Tensor, proj: torch.Tensor) -> None:
        """Makes the model output l2n((l2n([g; 1]) - mean) proj), mean (D+1,), proj
        (D+1, D+1) invertible, and re-parameterises the classifier so that its logits on the
        whitened vector are the old logits divided by ||[g; 1]|| (+1e-6): the same argmax.

        With W_a = [W, b] acting on [g; 1] and z = (l2n([g; 1]) - m) P: W' = W_a P^{-T} and
        b' = m W_aᵀ, so z W'ᵀ + b' = l2n([g; 1]) W_aᵀ (the release's integrate_whitening).
        """
        if self.whitened:
            raise RuntimeError("MultiGrain: whitening is already integrated")
        d1 = self.trunk.out_dim + 1
        if mean.shape != (d1,) or proj.shape != (d1, d1):
            raise ValueError(f"integrate_whitening: expected mean ({d1},) and proj ({d1}, {d1}), got "
                             f"{tuple(mean.shape)} and {tuple(proj.shape)}")
        W, b = self.classifier.weight.double(), self.classifier.bias.double()
        if self.add_bias:            # the 1 channel is already an input: fold b into its column
            Wa = W.clone()
            Wa[:, -1] += b
        else:
            Wa = torch.cat([W, b[:, None]], 1)
        P, m = proj.double().to(W.device), mean.double().to(W.device)
        new_w = torch.linalg.solve(P, Wa.T).T          # W_a P^{-T}: solve P X = W_aᵀ, X = P^{-1} W_aᵀ
        classifier = nn.Linear(d1, Wa.shape[0]).to(self.classifier.weight.device)
        classifier.weight.copy_(new_w.float())
        classifier.bias.copy_((m @ Wa.T).float())
        self.classifier = classifier
        self.whiten_mean = m.float()
        self.whiten_proj = P.float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A whitened checkpoint: size the buffers and the classifier before loading.
        proj = state_dict.get(prefix + "whiten_proj")
        if proj is not None and proj.numel() and not self.whitened:
            d1 = proj.shape[0]
            self.whiten_mean = torch.zeros(d1)
            self.whiten_proj = torch.zeros(d1, d1)
            self.classifier = nn.Linear(d1, self.classifier.out_features)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
