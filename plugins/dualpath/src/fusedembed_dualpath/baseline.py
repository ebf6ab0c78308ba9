"""A retrieval baseline without deep learning: bag-of-words captions and hand-made image
features matched by regularised CCA (in the spirit of Hodosh et al.'s KCCA and Gong et al.'s
CCA baselines for image–sentence ranking).

* caption: tf-idf weighted bag of words over the dataset vocabulary, L2-normalised;
* image: a joint RGB colour histogram (8 bins per channel) and a 16 × 16 colour thumbnail,
  each L2-normalised;
* CCA fitted on every (image, caption) pair of the training split, ridge ``reg`` on both
  covariances; both sides projected onto the top ``dim`` canonical directions, scaled by the
  canonical correlations to the power 4 (Gong et al.), L2-normalised and ranked by cosine.

It sees the same training pairs as the model and learns a linear map between two fixed
representations, so it measures how much the learned deep features add.
"""

import torch
import torch.nn.functional as F


def bow(dataset) -> torch.Tensor:
    """(M, V) tf-idf bag of words of every caption of a caption dataset."""
    m, v = dataset.num_captions, len(dataset.vocab)
    out = torch.zeros(m, v)
    for j in range(m):
        ids = dataset.tokens_of(j)
        out[j].index_add_(0, ids, torch.ones(len(ids)))
    out[:, 0] = 0                                      # <pad>
    return out


def tfidf(counts: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
    return F.normalize(counts * idf, dim=1)


def image_features(dataset, thumb: int = 16, bins: int = 8) -> torch.Tensor:
    """(N, bins³ + 3·thumb²) colour histogram and thumbnail of every image."""
    rows = []
    for i in range(dataset.num_images):
        img = dataset.load_image(i).clamp(0, 1)        # (3, H, W) in [0, 1]
        q = (img * (bins - 1e-6)).long()
        hist = torch.bincount(((q[0] * bins + q[1]) * bins + q[2]).flatten(), minlength=bins ** 3).float()
        small = F.adaptive_avg_pool2d(img[None], thumb).flatten()
        rows.append(torch.cat([F.normalize(hist, dim=0), F.normalize(small, dim=0)]))
    return torch.stack(rows)


def _inv_sqrt(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return vecs @ torch.diag(vals.clamp(min=1e-12).rsqrt()) @ vecs.T


class BowCCA:
    """Fits on a training caption dataset; :meth:`embed` maps another split's images and
    captions into the canonical space."""

    def __init__(self, dim: int = 64, reg: float = 1e-3, power: float = 4.0, thumb: int = 16, bins: int = 8):
        self.dim, self.reg, self.power, self.thumb, self.bins = dim, reg, power, thumb, bins

    def fit(self, train) -> "BowCCA":
        counts = bow(train)
        self.idf = torch.log((1 + len(counts)) / (1 + (counts > 0).sum(0).float())) + 1
        txt = tfidf(counts, self.idf).double()
        img = image_features(train, self.thumb, self.bins).double()[train.caption_to_image]   # one row per pair
        self.mx, self.my = img.mean(0), txt.mean(0)
        x, y = img - self.mx, txt - self.my
        n = len(x)
        cxx = x.T @ x / n + self.reg * torch.eye(x.shape[1], dtype=x.dtype)
        cyy = y.T @ y / n + self.reg * torch.eye(y.shape[1], dtype=y.dtype)
        a, b = _inv_sqrt(cxx), _inv_sqrt(cyy)
        u, s, vt = torch.linalg.svd(a @ (x.T @ y / n) @ b)
        k = min(self.dim, len(s))
        scale = s[:k] ** self.power
        self.wx, self.wy = a @ u[:, :k] * scale, b @ vt[:k].T * scale
        return self

    def embed(self, dataset) -> tuple:
        """(image embeddings (N, k), caption embeddings (M, k)), L2-normalised."""
        img = (image_features(dataset, self.thumb, self.bins).double() - self.mx) @ self.wx
        txt = (tfidf(bow(dataset), self.idf).double() - self.my) @ self.wy
        return F.normalize(img, dim=1).float(), F.normalize(txt, dim=1).float()
