"""Combining per-source relevance scores into one ranking.

Three methods, compared in benchmarks/search.py:
- `max`: relevance = max over sources of the normalised score (the seed documents'
  max{L_text, L_image, L_graph});
- `weighted`: a weighted sum of normalised scores, weights tuned on development queries;
- `rrf`: reciprocal-rank fusion, sum of 1 / (60 + rank) over sources (no score scales needed).
Scores are min-max normalised per query over the candidate set, so sources with different
scales (BM25, cosine) become comparable; a source that scores nothing contributes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

METHODS = ("weighted", "max", "rrf")
RRF_K = 60


def normalise(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; an all-equal or empty vector becomes zeros (it ranks nothing)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-12:
        return np.zeros_like(scores)
    return (scores - low) / (high - low)


def fuse(scores: Mapping[str, np.ndarray], method: str = "weighted",
         weights: Mapping[str, float] | None = None) -> np.ndarray:
    """One fused score per candidate from aligned per-source score vectors."""
    if method not in METHODS:
        raise ValueError(f"unknown fusion {method!r}; expected one of {METHODS}")
    if not scores:
        raise ValueError("nothing to fuse")
    n = len(next(iter(scores.values())))
    weights = weights or {}
    if method == "rrf":
        fused = np.zeros(n)
        for name, values in scores.items():
            values = np.asarray(values, dtype=np.float64)
            if values.size == 0 or np.ptp(values) == 0:
                continue  # a constant source ranks nothing
            ranks = np.empty(n)
            ranks[np.argsort(-values, kind="stable")] = np.arange(n)
            fused += weights.get(name, 1.0) / (RRF_K + 1 + ranks)
        return fused
    normalised = {name: normalise(v) for name, v in scores.items()}
    if method == "max":
        return np.max(np.vstack([weights.get(k, 1.0) * v for k, v in normalised.items()]),
                      axis=0)
    return np.sum(np.vstack([weights.get(k, 1.0) * v for k, v in normalised.items()]), axis=0)
