"""PCA whitening (``scripts/whiten.py``, ``lib/whiten.py``): fitted on the features
l2n([GeM; 1]) of an external image set (20k YFCC100M images in the paper; here the user's
folder or any image list), as sklearn's ``PCA(whiten=True)``: P = V / sqrt(λ) with the
eigenvectors V of the covariance in decreasing eigenvalue order, mean m. The descriptor is
l2n((l2n([g; 1]) - m) P); :meth:`MultiGrain.integrate_whitening` puts it into the model and
re-parameterises the classifier. ``include_last=False`` leaves the constant channel out of
the PCA (passed through unchanged, the release's ``--no-include-last``).
"""

from typing import Tuple

import torch

from .model import add_bias_channel, l2n
from .retrieval import embed_images
from .transforms import eval_transform


def fit_whitening(features: torch.Tensor, include_last: bool = True,
                  min_variance: float = 1e-12) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), P (D, D)) of ``features`` (N, D); eigenvalues are floored at
    ``min_variance`` x the largest (directions the sample does not span)."""
    x = torch.as_tensor(features).detach().double()
    if x.dim() != 2 or len(x) < 2:
        raise ValueError(f"fit_whitening: need (N >= 2, D) features, got shape {tuple(x.shape)}")
    fit = x if include_last else x[:, :-1]
    m = fit.mean(0)
    xc = fit - m
    eigval, eigvec = torch.linalg.eigh(xc.T @ xc / (len(x) - 1))
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)
    eigval = eigval.clamp_min(float(eigval[0]) * min_variance)
    P = eigvec / eigval.sqrt()
    if include_last:
        return m, P
    d = x.shape[1]
    full = torch.zeros(d, d, dtype=P.dtype)
    full[:-1, :-1] = P
    full[-1, -1] = 1.0
    return torch.cat([m, m.new_zeros(1)]), full


@torch.no_grad()
def whitening_features(model, images, size: int, device="cpu", batch_size: int = 32) -> torch.Tensor:
    """l2n([g; 1]) of ``images`` at ``size`` (largest side), the model's current p."""
    g = embed_images(model, images, eval_transform("rect", size), device, batch_size, output="gem")
    return l2n(g if model.add_bias else add_bias_channel(g))


def whiten_model(model, images, size: int, device="cpu", include_last: bool = True, batch_size: int = 32):
    """Fits the whitening on ``images`` and integrates it into ``model`` (in place)."""
    m, P = fit_whitening(whitening_features(model, images, size, device, batch_size), include_last)
    model.integrate_whitening(m.float(), P.float())
    return model
