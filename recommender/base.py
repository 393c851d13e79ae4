"""The one interface every recommender implements, modelled on `implicit`'s RecommenderBase.

A model implements `fit` and `score`; ranking (`recommend`) is written once here, so every
model excludes seen items, breaks ties and bounds memory the same way, and the evaluation code
treats all models alike.

Conventions (the same as `implicit`):
- matrices are users x items CSR; values are interaction weights (counts, ratings, 1s);
- `user_items` passed with `user_rows` has one row per entry of `user_rows`, row `i` being the
  history of user `user_rows[i]` (e.g. `train[user_rows]`), not the whole matrix;
- a user row at or beyond the number of users seen by `fit` is a user the model has not been
  trained on: models that can (ItemKNN, ALS) score it from its history, the others fall back
  to a non-personalised score.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

# scores held at once by `recommend`: users per batch = SCORE_CELLS // n_items (about 16 MiB
# of float32), so ranking 30k users over 40k items never needs a 30k x 40k dense matrix
SCORE_CELLS = 1 << 22


_CONTROLLER: dict[int, ThreadpoolController] = {}


def _controller() -> ThreadpoolController:
    """A threadpool controller, rebuilt whenever modules were imported since the last one.

    Scanning the loaded libraries costs milliseconds, so the controller is cached; but a
    library loaded after the scan (scipy's own OpenBLAS arrives with `scipy.linalg`, which
    implicit's solvers call through) would escape a stale one.
    """
    from threadpoolctl import ThreadpoolController

    key = len(sys.modules)
    if key not in _CONTROLLER:
        _CONTROLLER.clear()
        _CONTROLLER[key] = ThreadpoolController()
    return _CONTROLLER[key]


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit BLAS threads inside the block.

    implicit's native solvers call BLAS (scipy's) per user; a multi-threaded BLAS underneath
    oversubscribes the cores (implicit warns about exactly this). Measured here: an ALS fit
    with 256 factors took 14-170 s instead of 2 s with scipy's OpenBLAS left at 2 threads on
    a busy 2-core machine.
    """
    with _controller().limit(limits=max(1, int(n)), user_api="blas"):
        yield


def as_user_rows(user_rows: int | np.ndarray | list[int]) -> np.ndarray:
    """User rows as a 1-d int64 array; negative rows are a caller error."""
    rows = np.atleast_1d(np.asarray(user_rows, dtype=np.int64))
    if rows.ndim != 1:
        raise ValueError("user_rows must be an int or a 1-d array of ints")
    if len(rows) and rows.min() < 0:
        raise ValueError(f"negative user row {int(rows.min())}")
    return rows


def binarised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The matrix's pattern with every stored value set to 1 (float32)."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def spread_rows(matrix: sp.csr_matrix, user_items: sp.csr_matrix) -> np.ndarray | None:
    """`user_items @ matrix` as a dense (1 x columns) array when `user_items` is one row,
    else None. Serving scores one user per request: gathering that user's few rows of
    `matrix` and summing them skips the sparse-by-sparse product's setup, which costs more
    than the arithmetic at that size."""
    if user_items.shape[0] != 1:
        return None
    row = sp.csr_matrix(user_items)
    out = np.zeros((1, matrix.shape[1]), dtype=np.float32)
    items, weights = row.indices, row.data.astype(np.float32)
    keep = weights != 0
    items, weights = items[keep], weights[keep]
    if len(items) == 0:
        return out
    starts, stops = matrix.indptr[items], matrix.indptr[items + 1]
    lengths = stops - starts
    picked = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
        lengths.sum())
    values = np.repeat(weights, lengths) * matrix.data[picked]
    out[0] = np.bincount(matrix.indices[picked], weights=values, minlength=matrix.shape[1])
    return out


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `k` best columns, best first; -inf slots are returned as item -1.

    argpartition finds the k best in O(n_items) per row, only those k are sorted. Which of
    several items tied at the k-th score get in is arbitrary (but deterministic); within the
    list, equal scores are ordered by item index.
    """
    n_items = scores.shape[1]
    k = min(k, n_items)
    if k <= 0:
        empty = np.empty((scores.shape[0], 0))
        return empty.astype(np.int64), empty.astype(scores.dtype)
    if k < n_items:
        part = np.argpartition(scores, n_items - k, axis=1)[:, n_items - k:]
    else:
        part = np.broadcast_to(np.arange(n_items), scores.shape).copy()
    best = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -best), axis=1)  # best first, equal scores by item index
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    values = np.take_along_axis(best, order, axis=1)
    ids[np.isneginf(values)] = -1
    return ids, values



@dataclass(frozen=True)
class Reason:
    """Why a source proposed a product: the history product and graph node behind it."""

    source: str
    contribution: float
    because_of: int | None = None  # a product row from the user's history
    via: str | None = None  # a graph node's name (brand, category, attribute, entity)
    relation: str | None = None  # entity paths: the KG relation leading to `via`


class Recommender(ABC):
    """Fit on a users x items matrix, score users over all items, recommend the top k."""

    name: str = "recommender"

    n_users: int = 0
    n_items: int = 0

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix) -> Self:
        """Learn from the users x items matrix; sets `n_users` and `n_items`."""

    @abstractmethod
    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Dense scores, shape (len(user_rows), n_items), higher is better.

        `user_items` holds the histories of `user_rows` (one row each). The returned array
        is new: `recommend` writes into it.
        """

    def recommend(
        self,
        user_rows: int | np.ndarray | list[int],
        user_items: sp.csr_matrix,
        k: int = 20,
        exclude_seen: bool = True,
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item indices and scores of the `k` best items per user, best first.

        Items in the user's row of `user_items` are masked to -inf when `exclude_seen`;
        when fewer than `k` items remain the tail is item -1 with score -inf. Users are
        scored in batches of `batch_size` (default: about SCORE_CELLS scores per batch).
        A scalar `user_rows` gives 1-d results, an array gives one row per user.
        """
        self._check_fitted()
        rows = as_user_rows(user_rows)
        user_items = self._check_user_items(rows, user_items)
        k = min(int(k), self.n_items)
        step = batch_size or max(1, SCORE_CELLS // max(self.n_items, 1))
        ids = np.empty((len(rows), max(k, 0)), dtype=np.int64)
        values = np.empty((len(rows), max(k, 0)), dtype=np.float32)
        for start in range(0, len(rows), step):
            stop = min(start + step, len(rows))
            history = user_items[start:stop]
            scores = self.score(rows[start:stop], history)
            if scores.shape != (stop - start, self.n_items):
                raise RuntimeError(f"{self.name}.score returned shape {scores.shape}, "
                                   f"expected {(stop - start, self.n_items)}")
            if exclude_seen and history.nnz:
                seen_rows = np.repeat(np.arange(stop - start), np.diff(history.indptr))
                scores[seen_rows, history.indices] = -np.inf
            ids[start:stop], values[start:stop] = top_k(scores, k)
        if np.isscalar(user_rows) or np.ndim(user_rows) == 0:
            return ids[0], values[0]
        return ids, values

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The `k` items most similar to `item` (itself excluded), best first."""
        raise NotImplementedError(f"{self.name} has no notion of item similarity")

    # ---- helpers for implementations -------------------------------------------------------
    def _check_fitted(self) -> None:
        if not self.n_items:
            raise RuntimeError(f"{self.name} is not fitted: call fit(user_items) first")

    def _check_user_items(self, rows: np.ndarray, user_items: sp.spmatrix) -> sp.csr_matrix:
        if not sp.issparse(user_items):
            raise TypeError("user_items must be a scipy sparse matrix (CSR)")
        user_items = sp.csr_matrix(user_items)
        if user_items.shape[0] != len(rows):
            raise ValueError(
                f"user_items has {user_items.shape[0]} rows for {len(rows)} users: pass one "
                "history row per user (e.g. train[user_rows]), as implicit does")
        if user_items.shape[1] != self.n_items:
            raise ValueError(f"user_items has {user_items.shape[1]} items, model was fitted "
                             f"on {self.n_items}")
        return user_items

    def _fitted_on(self, user_items: sp.spmatrix) -> sp.csr_matrix:
        """Validate a training matrix and record its shape."""
        if not sp.issparse(user_items):
            raise TypeError("user_items must be a scipy sparse matrix (CSR)")
        matrix = sp.csr_matrix(user_items)
        if matrix.shape[1] == 0:
            raise ValueError("cannot fit on a matrix with no items")
        if matrix.nnz and matrix.data.min() < 0:
            raise ValueError("interaction weights must be non-negative")
        self.n_users, self.n_items = matrix.shape
        return matrix


def row_norms(factors: np.ndarray) -> np.ndarray:
    """L2 norm of every row, zeros replaced by a tiny value so a division is always safe."""
    norms = np.linalg.norm(factors, axis=1)
    norms[norms == 0] = 1e-10
    return norms


def cached_row_norms(owner: object, factors: np.ndarray) -> np.ndarray:
    """`row_norms(factors)`, kept on `owner` until it holds other factors: serving asks for
    neighbours per request, and the norms of Complete Journey's 92k x 256 ALS factors take
    ~20 ms, most of a related-products answer."""
    cached = getattr(owner, "_row_norms", None)
    if cached is None or cached[0] is not factors:
        cached = (factors, row_norms(factors))
        owner._row_norms = cached  # type: ignore[attr-defined]
    return cached[1]


def cosine_neighbours(factors: np.ndarray, item: int, k: int, norms: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Items whose factor vectors have the highest cosine with `item`'s, itself excluded
    (`norms`: the rows' `row_norms`, when the caller keeps them)."""
    norms = row_norms(factors) if norms is None else norms
    sims = (factors @ factors[item]) / (norms * norms[item])
    sims[item] = -np.inf
    ids, values = top_k(sims[None, :].astype(np.float32), k)
    keep = ids[0] >= 0
    return ids[0][keep], values[0][keep]
