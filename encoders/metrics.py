"""Retrieval metrics for encoders (paired cross-modal retrieval)."""

from __future__ import annotations

import numpy as np


def retrieval_recall(similarity: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
                     ) -> dict[str, float]:
    """Recall@k when query i's only correct answer is candidate i (`similarity[i, i]`).

    The rank of the right answer is the number of candidates scoring strictly higher, so ties
    do not flatter the model.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"need a square similarity matrix, got {similarity.shape}")
    correct = np.diag(similarity)[:, None]
    rank = (similarity > correct).sum(axis=1)
    return {f"R@{k}": float((rank < k).mean()) for k in ks}
