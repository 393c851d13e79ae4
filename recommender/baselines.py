"""Reference models every other recommender must beat: popularity, item kNN and BPR-MF.

They share `Recommender`'s ranking, so their numbers differ only by the scores they produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp

from recommender.base import Recommender, binarised, blas_threads, cosine_neighbours, spread_rows


class Popularity(Recommender):
    """Score = number of distinct training users of the item; the same list for everyone.

    Counting users rather than summing weights keeps one heavy user from making an item
    'popular' (and matches the MostPop baseline of the published comparisons).
    """

    name = "popularity"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, user_items: sp.csr_matrix) -> Self:
        matrix = self._fitted_on(user_items)
        self.counts = np.asarray(binarised(matrix).sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted()
        return np.repeat(self.counts[None, :], len(user_rows), axis=0)

    def save(self, path: str | Path) -> Path:
        """The counts as an `.npz` (no pickle)."""
        self._check_fitted()
        path = _npz(path)
        np.savez(path, counts=self.counts, n_users=self.n_users)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Popularity:
        with np.load(Path(path), allow_pickle=False) as data:
            model = cls()
            model.counts = data["counts"].astype(np.float32)
            model.n_users, model.n_items = int(data["n_users"]), len(model.counts)
        return model


class ItemKNN(Recommender):
    """Item-based collaborative filtering: cosine between items' user sets, shrunk and pruned.

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrinkage) on the binarised matrix;
    shrinkage damps similarities supported by few co-occurrences. Each item keeps its
    `neighbours` most similar items (itself excluded), and a user's score for item j is the
    sum of sim(i, j) over the items i in the user's history, so a user the model never saw is
    scored from its history alone. Similarities are computed in blocks of items and kept
    sparse (only co-occurring pairs are scored), so memory stays bounded by one block's
    co-occurrences whatever the catalogue size.

    With `weighted_history` a user's score sums sim(i, j) times the weight of i in the
    history passed in (e.g. a recency weight, so recent purchases count more) instead of 1.
    """

    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrinkage: float = 0.0, block: int = 256,
                 weighted_history: bool = False) -> None:
        if neighbours < 1:
            raise ValueError("neighbours must be >= 1")
        if shrinkage < 0:
            raise ValueError("shrinkage must be >= 0")
        self.neighbours, self.shrinkage, self.block = int(neighbours), float(shrinkage), block
        self.weighted_history = weighted_history
        self.similarity: sp.csr_matrix | None = None  # items x items, row i = i's neighbours

    def fit(self, user_items: sp.csr_matrix) -> Self:
        matrix = binarised(self._fitted_on(user_items))
        item_users = matrix.T.tocsr()
        norms = np.sqrt(np.asarray(item_users.sum(axis=1), dtype=np.float32).ravel())
        keep = min(self.neighbours, max(self.n_items - 1, 1))
        rows, cols, vals = [], [], []
        for start in range(0, self.n_items, self.block):
            stop = min(start + self.block, self.n_items)
            # co-occurrences stay sparse: a grocery item co-occurs with a few thousand of
            # 92k items, so scoring and ranking only those is ~20x faster than dense rows
            co = (item_users[start:stop] @ matrix).tocoo()
            row, col = co.row, co.col
            denom = norms[row + start] * norms[col] + self.shrinkage
            sims = np.divide(co.data, denom, out=np.zeros(len(row), np.float32),
                             where=denom > 0).astype(np.float32)
            useful = (sims > 0) & (col != row + start)  # not its own neighbour
            row, col, sims = row[useful], col[useful], sims[useful]
            order = np.lexsort((col, -sims, row))  # per row: best first, ties by item
            row, col, sims = row[order], col[order], sims[order]
            first = np.searchsorted(row, np.arange(stop - start))
            rank = np.arange(len(row)) - first[row]
            kept = rank < keep
            rows.append(row[kept] + start)
            cols.append(col[kept])
            vals.append(sims[kept])
        self.similarity = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(self.n_items, self.n_items), dtype=np.float32,
        )
        return self

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted()
        history = (sp.csr_matrix(user_items, dtype=np.float32) if self.weighted_history
                   else binarised(user_items))
        one = spread_rows(self.similarity, history)  # a single user (serving)
        return one if one is not None else (history @ self.similarity).toarray()

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The item's kept neighbours (at most `neighbours` of them), most similar first."""
        self._check_fitted()
        row = self.similarity[item]
        order = np.argsort(-row.data, kind="stable")[:k]
        return row.indices[order].astype(np.int64), row.data[order]

    def save(self, path: str | Path) -> Path:
        """Parameters and the pruned similarity matrix as an `.npz` (no pickle)."""
        self._check_fitted()
        path = _npz(path)
        sim = self.similarity
        np.savez(path, data=sim.data, indices=sim.indices, indptr=sim.indptr,
                 n_users=self.n_users, n_items=self.n_items, neighbours=self.neighbours,
                 shrinkage=self.shrinkage, block=self.block,
                 weighted_history=self.weighted_history)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ItemKNN:
        with np.load(Path(path), allow_pickle=False) as data:
            model = cls(int(data["neighbours"]), float(data["shrinkage"]), int(data["block"]),
                        bool(data["weighted_history"]))
            model.n_users, model.n_items = int(data["n_users"]), int(data["n_items"])
            model.similarity = sp.csr_matrix(
                (data["data"], data["indices"], data["indptr"]),
                shape=(model.n_items, model.n_items))
        return model


class BPRMF(Recommender):
    """Matrix factorisation trained with BPR's pairwise loss, via implicit's CPU implementation.

    implicit's BPR learns an item bias as the last factor column (the users' last column is
    fixed at 1), so an unseen user scores items by that bias, a learned popularity. Training
    is hogwild SGD: results are reproducible for a seed only with `num_threads=1` (the
    default); with more threads updates race and runs may differ slightly.
    """

    name = "bpr"

    def __init__(
        self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
        iterations: int = 100, seed: int | None = 0, num_threads: int = 1,
        verify_negative_samples: bool = True,
    ) -> None:
        self.factors, self.learning_rate = factors, learning_rate
        self.regularization, self.iterations = regularization, iterations
        self.seed, self.num_threads = seed, num_threads
        self.verify_negative_samples = verify_negative_samples
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def fit(self, user_items: sp.csr_matrix) -> Self:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        matrix = binarised(self._fitted_on(user_items))
        with blas_threads(1):
            model = BayesianPersonalizedRanking(
                factors=self.factors, learning_rate=self.learning_rate,
                regularization=self.regularization, iterations=self.iterations,
                num_threads=self.num_threads, random_state=self.seed,
                verify_negative_samples=self.verify_negative_samples,
            )
            model.fit(matrix, show_progress=False)
        self.user_factors, self.item_factors = model.user_factors, model.item_factors
        return self

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted()
        users = np.zeros((len(user_rows), self.item_factors.shape[1]), dtype=np.float32)
        users[:, -1] = 1.0  # unseen users: item bias only
        known = user_rows < len(self.user_factors)
        users[known] = self.user_factors[user_rows[known]]
        with blas_threads(self.num_threads):
            return users @ self.item_factors.T

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine over the items' factors (bias column excluded)."""
        self._check_fitted()
        return cosine_neighbours(self.item_factors[:, :-1], item, k)


def _npz(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
