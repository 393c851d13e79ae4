"""Choosing a parameter on validation rows: the one grid loop every tuned part shares.

Trending's half-life, the baselines' grids (`experiment.tune_baseline`) and the hybrid's
source parameters (`training.tune_sources`) all do the same thing: score each candidate on
validation rows that come from the training period, keep the best, refit with it. One loop
keeps them from drifting apart (e.g. one breaking ties differently).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import scipy.sparse as sp

from recommender.base import Recommender

T = TypeVar("T")


def best_on_grid(candidates: Sequence[T], score: Callable[[T], float],
                 min_gain: float = 0.0) -> tuple[T, list[tuple[T, float]]]:
    """The candidate with the best `score`, tried in order: a later one must beat the best
    so far by the relative `min_gain` (so, ordered simplest first, a tie keeps the simpler).

    Returns (best, [(candidate, score), ...] in the order tried).
    """
    if not candidates:
        raise ValueError("best_on_grid needs at least one candidate")
    if min_gain < 0:
        raise ValueError("min_gain must be >= 0")
    trials: list[tuple[T, float]] = []
    best, best_score = candidates[0], -float("inf")
    for candidate in candidates:
        value = float(score(candidate))
        trials.append((candidate, value))
        bar = best_score * (1.0 + min_gain) if best_score > 0 else best_score
        if value > bar:
            best, best_score = candidate, value
    return best, trials


def combinations(grid: Mapping[str, Sequence[Any]], base: Mapping[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Every combination of `grid`'s values, each over a copy of `base`."""
    return [{**(base or {}), **dict(zip(grid, values))}
            for values in itertools.product(*grid.values())]


def validation_scores(model: Recommender, fit: sp.csr_matrix, valid: sp.csr_matrix,
                      k: int = 20) -> tuple[float, float]:
    """(NDCG@k, Recall@k) of a model fitted on `fit` against `valid`."""
    from recommender.evaluation import evaluate

    result = evaluate(model, fit, valid, k=k)
    return float(result[f"ndcg@{k}"]), float(result[f"recall@{k}"])


def key(params: Mapping[str, Hashable]) -> str:
    """A readable, stable label for a parameter set (logs, JSON keys)."""
    return ", ".join(f"{k}={v}" for k, v in params.items())
