"""Collapse figures of a batch of embeddings (N, D), computed on the host in float64.

- ``embedding_std``: SimSiam's collapse indicator (Chen & He, CVPR 2021, §4.1): each embedding
  l2-normalised, the standard deviation over the batch (population, ddof 0) of each dimension,
  averaged over the D dimensions. A collapsed output gives 0; one spread evenly over the sphere
  gives about 1/sqrt(D), so ``embedding_std_ratio`` = std·sqrt(D) reads about 1 whatever D.
- ``rankme``: RankMe (Garrido et al., ICML 2023, eq. 1): the singular values σ_k of the raw
  (N, D) matrix, p_k = σ_k / Σσ + ε (ε = 1e-7), exp(−Σ p_k log p_k); between 1 and min(N, D).
- ``mean_cosine``: the cosine similarity averaged over the N(N−1) ordered pairs of distinct rows.
"""

from __future__ import annotations

import numpy as np

#: RankMe's ε (the paper's value).
RANKME_EPS = 1e-7
#: Norm floor of the l2 normalisation (torch.nn.functional.normalize's), so a zero row stays 0.
NORM_EPS = 1e-12


def _matrix(embeddings) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"collapse figures: expected embeddings (N, D) with N >= 2, found "
                         f"shape {x.shape}")
    return x


def l2_normalize(embeddings) -> np.ndarray:
    """(N, D) → (N, D) rows of unit length (zero rows stay zero)."""
    x = _matrix(embeddings)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), NORM_EPS)


def embedding_std(embeddings) -> float:
    """Mean over dimensions of the batch standard deviation of the l2-normalised (N, D) rows."""
    return float(l2_normalize(embeddings).std(axis=0).mean())


def rankme(embeddings, eps: float = RANKME_EPS) -> float:
    """RankMe effective rank of the (N, D) matrix (not normalised, not centred, as the paper)."""
    sigma = np.linalg.svd(_matrix(embeddings), compute_uv=False)
    p = sigma / max(sigma.sum(), np.finfo(np.float64).tiny) + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def mean_cosine(embeddings) -> float:
    """Mean cosine similarity over distinct pairs: (|Σ z_i|² − Σ |z_i|²) / (N(N−1)), z = rows
    l2-normalised."""
    z = l2_normalize(embeddings)
    n = z.shape[0]
    total = z.sum(axis=0)
    return float((total @ total - np.sum(z * z)) / (n * (n - 1)))


def collapse_figures(embeddings, prefix: str = "monitor/") -> dict[str, float]:
    """All figures of (N, D) ``embeddings`` as ``{prefix + name: value}``: embedding_std,
    embedding_std_ratio (std·sqrt(D)), rankme, mean_cosine."""
    x = _matrix(embeddings)
    std = embedding_std(x)
    return {f"{prefix}embedding_std": std,
            f"{prefix}embedding_std_ratio": std * float(np.sqrt(x.shape[1])),
            f"{prefix}rankme": rankme(x),
            f"{prefix}mean_cosine": mean_cosine(x)}
