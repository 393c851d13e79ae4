"""Implicit-feedback ALS (Hu, Koren, Volinsky 2008) over `implicit`'s CPU solver.

Confidence. implicit treats each stored value as the confidence c_ui of a positive (p_ui = 1;
missing entries have c = 1, p = 0) and only multiplies by its own `alpha`. This wrapper builds
the confidence matrix itself from the interaction weights w_ui and hands it to implicit with
implicit's alpha fixed at 1, so the formula is explicit and the same for fit and fold-in:

- ``confidence="linear"``: c = 1 + alpha * w          (the paper's eq. 6)
- ``confidence="log"``:    c = 1 + alpha * log(1 + w / eps)   (the paper's log scaling, which
  flattens heavy repeat counts; eps sets where it starts to bite)

With binary feedback (w = 1) both are the same family (1 + alpha' for some alpha').

Fold-in. `recalculate_user` solves a user's factors from a history row against the fixed
item factors (implicit's `recalculate_user=True` path: an exact least-squares solve), so a
user whose history changed, or a user never seen in training, gets a vector without
retraining. `fold_in` stores that vector; no other user's or item's factors change. Note that
`fit` uses implicit's conjugate-gradient solver (3 steps per sweep), so a recalculated vector
for an unchanged history is close to, not identical with, the fitted one.

Engines. ``engine="implicit"`` (the default) fits in this process; ``engine="spark"`` fits
the same confidences with Spark MLlib's implicit ALS (`recommender.spark_als`), locally or on
a cluster (`spark_master`), and keeps the factors here: the saved file, fold-in and scoring
are the same whichever engine fitted them. Only `fit` needs Spark.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

import numpy as np
import scipy.sparse as sp

from recommender.base import (
    Recommender,
    as_user_rows,
    blas_threads,
    cached_row_norms,
    cosine_neighbours,
)

if TYPE_CHECKING:
    from implicit.cpu.als import AlternatingLeastSquares

Confidence = Literal["linear", "log"]
Engine = Literal["implicit", "spark"]
ENGINES = ("implicit", "spark")


class ALSRecommender(Recommender):
    """Weighted matrix factorisation for implicit feedback, confidence from the weights."""

    name = "als"

    def __init__(
        self, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0,
        iterations: int = 15, seed: int | None = 0, confidence: Confidence = "linear",
        eps: float = 1.0, num_threads: int = 1, engine: Engine = "implicit",
        spark_master: str | None = None,
    ) -> None:
        if confidence not in ("linear", "log"):
            raise ValueError(f"confidence must be 'linear' or 'log', not {confidence!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        if spark_master is not None and engine != "spark":
            raise ValueError("spark_master is only used by engine='spark'")
        if alpha < 0 or eps <= 0:
            raise ValueError("alpha must be >= 0 and eps > 0")
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed, self.confidence = iterations, seed, confidence
        self.eps, self.num_threads = eps, num_threads
        self.engine, self.spark_master = engine, spark_master
        self.model = self._implicit_model()

    def _implicit_model(self) -> AlternatingLeastSquares:
        from implicit.cpu.als import AlternatingLeastSquares

        with blas_threads(1):  # implicit checks the BLAS threads when it is constructed
            return AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=1.0,
                iterations=self.iterations, num_threads=self.num_threads,
                random_state=self.seed, dtype=np.float32,
            )

    @property
    def user_factors(self) -> np.ndarray:
        return self.model.user_factors

    @property
    def item_factors(self) -> np.ndarray:
        return self.model.item_factors

    def scaled_weights(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        """r with c = 1 + alpha * r: w (linear) or log(1 + w / eps) (float32 CSR, same
        pattern); what Spark's implicit ALS takes as its ratings."""
        scaled = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        scaled.eliminate_zeros()
        if self.confidence == "log":
            scaled.data = np.log1p(scaled.data / np.float32(self.eps))
        scaled.data = scaled.data.astype(np.float32, copy=False)
        return scaled

    def confidence_matrix(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        """The weights turned into confidences (float32 CSR, same pattern), as implicit wants."""
        conf = self.scaled_weights(user_items)
        conf.data = (1.0 + np.float32(self.alpha) * conf.data).astype(np.float32, copy=False)
        return conf

    def fit(self, user_items: sp.csr_matrix, log: Callable[[str], None] | None = None
            ) -> Self:
        """Fit with the chosen engine; `log` gets the spark engine's progress lines
        (default: the `recommender.spark_als` logger, at INFO)."""
        matrix = self._fitted_on(user_items)
        self.model = self._implicit_model()
        if self.engine == "spark":
            from recommender.spark_als import fit_factors

            users, items = fit_factors(
                self.scaled_weights(matrix), self.factors, self.regularization, self.alpha,
                self.iterations, self.seed, master=self.spark_master,
                threads=self.num_threads, **({} if log is None else {"log": log}))
            self.model.user_factors, self.model.item_factors = users, items
            return self
        with blas_threads(1):
            self.model.fit(self.confidence_matrix(matrix), show_progress=False)
        return self

    def recalculate_user(self, user_rows: np.ndarray | int, user_items: sp.csr_matrix
                         ) -> np.ndarray:
        """Factors for users solved from their (current) histories; nothing is stored."""
        self._check_fitted()
        rows = as_user_rows(user_rows)
        user_items = self._check_user_items(rows, user_items)
        with blas_threads(1):
            factors = self.model.recalculate_user(rows, self.confidence_matrix(user_items))
        return np.asarray(factors, dtype=np.float32).reshape(len(rows), -1)

    def fold_in(self, user_row: int, user_items_row: sp.csr_matrix) -> np.ndarray:
        """Re-solve one user's factors from the full updated history row and store them.

        `user_items_row` is the user's whole history after the new events (1 x n_items),
        not only the new events. A row beyond the trained users adds that user. Returns the
        new factor vector.
        """
        self._check_fitted()
        rows = as_user_rows(user_row)
        if len(rows) != 1:
            raise ValueError("fold_in takes one user; use recalculate_user for a batch")
        row = self._check_user_items(rows, user_items_row)
        with blas_threads(1):
            self.model.partial_fit_users(rows, self.confidence_matrix(row))
        self.n_users = max(self.n_users, len(self.model.user_factors))
        return self.model.user_factors[rows[0]].copy()

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted()
        rows = as_user_rows(user_rows)
        users = np.empty((len(rows), self.factors), dtype=np.float32)
        known = rows < len(self.user_factors)
        users[known] = self.user_factors[rows[known]]
        if not known.all():  # never trained on: solve from the history passed in
            unknown = np.flatnonzero(~known)
            users[unknown] = self.recalculate_user(rows[unknown], user_items[unknown])
        with blas_threads(self.num_threads):
            return users @ self.item_factors.T

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine over the item factors."""
        self._check_fitted()
        return cosine_neighbours(self.item_factors, item, k,
                                 cached_row_norms(self, self.item_factors))

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write factors and hyper-parameters to an `.npz` (no pickle)."""
        self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        np.savez(
            path, user_factors=self.user_factors, item_factors=self.item_factors,
            factors=self.factors, regularization=self.regularization, alpha=self.alpha,
            iterations=self.iterations, seed=-1 if self.seed is None else self.seed,
            confidence=self.confidence, eps=self.eps, num_threads=self.num_threads,
            engine=self.engine,
        )
        return path

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = None) -> ALSRecommender:
        """A fitted model from `save`'s file, ready to score and fold in."""
        with np.load(Path(path), allow_pickle=False) as data:
            seed = int(data["seed"])
            model = cls(
                factors=int(data["factors"]), regularization=float(data["regularization"]),
                alpha=float(data["alpha"]), iterations=int(data["iterations"]),
                seed=None if seed < 0 else seed, confidence=str(data["confidence"]),
                eps=float(data["eps"]),
                num_threads=int(data["num_threads"]) if num_threads is None else num_threads,
                engine=str(data["engine"]) if "engine" in data else "implicit",
            )
            model.model.user_factors = data["user_factors"].astype(np.float32)
            model.model.item_factors = data["item_factors"].astype(np.float32)
        model.n_users, model.n_items = len(model.user_factors), len(model.item_factors)
        return model
