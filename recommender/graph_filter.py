"""A graph-filter source: closed-form low-pass filtering of the user-product-KG graph.

Why: LightGCN's propagation is a low-pass filter on the normalised interaction graph, and
GF-CF (Shen et al., "How Powerful is Graph Convolution for Recommendation?", CIKM 2021) showed
the filter can be applied in closed form, with no embeddings to train. On a 2-core CPU that is
minutes where LightGCN needs about 111 s per epoch on Gowalla (benchmarks/results/gnn_epoch.md),
and the quality is the same or better (benchmarks/results/recommend_gowalla.md).

With R the binary (rows x products) graph, the rows being users plus, optionally, the
knowledge graph's brand / category / attribute / entity nodes (each a "row" holding its
products, weighted by `kg_weight`), and R~ = D_r^-a R D_p^-b its normalised form:

- linear filter:      s_lin(x) = x R~^T R~                       (item-item smoothing)
- ideal low-pass:     s_low(x) = x D_p^-1/2 V V^T D_p^1/2       (V: R~'s top right singular
                                                                  vectors; the filter keeps
                                                                  only the graph's smoothest
                                                                  `factors` components)
- score:              s(x) = s_lin(x) + ideal_weight * s_low(x)
                             + content_weight * (x C) C^T        (C: unit content vectors,
                                                                  when the catalog has them)

`x` is the user's history row as given (recency-weighted histories make recent products count
more); no per-user parameter is learned, so a new user or a live event is scored from the
history row at once, with nothing to fold in. The linear term is computed as two sparse
products through the graph's rows ((x R~^T) R~), never as the dense product x product matrix
(92k x 92k on Complete Journey).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp

from recommender.base import Reason, Recommender, binarised, spread_rows, top_k

META_FILE = "graph_filter.json"


def _inverse_power(degrees: np.ndarray, exponent: float) -> np.ndarray:
    """degrees ** -exponent, with 0 for an isolated node (it has nothing to spread)."""
    out = np.zeros(len(degrees), dtype=np.float64)
    nonzero = degrees > 0
    out[nonzero] = degrees[nonzero] ** -float(exponent)
    return out


def randomized_right_singular_vectors(matrix: sp.csr_matrix, k: int, oversample: int = 64,
                                      power_iterations: int = 7, seed: int = 0) -> np.ndarray:
    """The top `k` right singular vectors by randomized subspace iteration (Halko, Martinsson
    & Tropp 2011): a few sparse x (k + oversample) products instead of ARPACK's thousands of
    matrix-vector products. The basis is kept orthonormal on the matrix's shorter side only,
    so each step's QR is on the smaller of (rows, columns) x (k + oversample)."""
    rng = np.random.default_rng(seed)
    a = sp.csr_matrix(matrix, dtype=np.float64)
    at = a.T.tocsr()
    width = min(k + oversample, min(a.shape))
    if a.shape[0] <= a.shape[1]:  # orthonormal basis of the row space side (rows x width)
        basis, _ = np.linalg.qr(a @ rng.standard_normal((a.shape[1], width)))
        for _ in range(power_iterations):
            basis, _ = np.linalg.qr(a @ (at @ basis))
        _, _, vt = np.linalg.svd((at @ basis).T, full_matrices=False)
        return vt[:k].T
    basis, _ = np.linalg.qr(at @ rng.standard_normal((a.shape[0], width)))  # columns x width
    for _ in range(power_iterations):
        basis, _ = np.linalg.qr(at @ (a @ basis))
    _, _, wt = np.linalg.svd(a @ basis, full_matrices=False)
    return basis @ wt[:k].T


class GraphFilterRecommender(Recommender):
    """GF-CF's linear + ideal low-pass filter over users and knowledge-graph nodes."""

    name = "graph_filter"

    def __init__(self, factors: int = 256, ideal_weight: float = 0.3,
                 row_exponent: float = 0.5, item_exponent: float = 0.5,
                 kg_weight: float = 0.0, content_weight: float = 0.0, seed: int = 0,
                 solver: str = "randomized") -> None:
        if factors < 0:
            raise ValueError("factors must be >= 0 (0 = no ideal low-pass term)")
        if min(ideal_weight, kg_weight, content_weight) < 0:
            raise ValueError("ideal_weight, kg_weight and content_weight must be >= 0")
        if solver not in ("randomized", "arpack"):
            raise ValueError(f"solver must be 'randomized' or 'arpack', not {solver!r}")
        self.solver = solver
        self.factors = int(factors)
        self.ideal_weight = float(ideal_weight)
        self.row_exponent = float(row_exponent)
        self.item_exponent = float(item_exponent)
        self.kg_weight = float(kg_weight)
        self.content_weight = float(content_weight)
        self.seed = int(seed)
        self.graph: sp.csr_matrix | None = None  # R~ (rows x items)
        self.graph_t: sp.csr_matrix | None = None  # R~^T (items x rows), for one-row scoring
        self.low_pass: np.ndarray | None = None  # V (items x factors)
        self.item_scale: np.ndarray | None = None  # D_p^1/2 of the filtered graph
        self.content: np.ndarray | None = None  # unit content vectors (items x dim) or None
        self.fit_seconds = 0.0

    def config(self) -> dict[str, float | int]:
        return {"factors": self.factors, "ideal_weight": self.ideal_weight,
                "row_exponent": self.row_exponent, "item_exponent": self.item_exponent,
                "kg_weight": self.kg_weight, "content_weight": self.content_weight,
                "seed": self.seed, "solver": self.solver}

    # ---- training --------------------------------------------------------------------------
    def fit(self, user_items: sp.csr_matrix, item_links: sp.spmatrix | None = None,
            product_features: np.ndarray | None = None,
            log: Callable[[str], None] | None = None) -> Self:
        """Normalise the graph and take its top singular vectors (no iterations, no epochs).

        `item_links` is a (products x KG nodes) incidence (brands, categories, attributes,
        entities), added to the graph as rows weighted by `kg_weight`; `product_features`
        are content vectors, one row per product, used when `content_weight` > 0.
        """
        started = time.perf_counter()
        matrix = self._fitted_on(user_items)
        graph = binarised(matrix)
        if item_links is not None and self.kg_weight > 0:
            links = sp.csr_matrix(item_links, dtype=np.float32)
            if links.shape[0] != self.n_items:
                raise ValueError(f"item_links has {links.shape[0]} products, the interactions "
                                 f"have {self.n_items}")
            graph = sp.vstack([graph, self.kg_weight * binarised(links.T.tocsr())]).tocsr()
        row_degree = np.asarray(graph.sum(axis=1)).ravel()
        item_degree = np.asarray(graph.sum(axis=0)).ravel()
        graph = (sp.diags(_inverse_power(row_degree, self.row_exponent).astype(np.float32))
                 @ graph @ sp.diags(_inverse_power(item_degree, self.item_exponent)
                                    .astype(np.float32))).tocsr().astype(np.float32)
        graph.eliminate_zeros()
        self.graph, self.graph_t = graph, graph.T.tocsr()
        self.item_scale = np.sqrt(item_degree).astype(np.float32)
        self.low_pass = self._top_singular_vectors(graph, log)
        self.content = None
        if product_features is not None and self.content_weight > 0:
            features = np.asarray(product_features, dtype=np.float32)
            if features.shape[0] != self.n_items:
                raise ValueError(f"product_features has {features.shape[0]} rows for "
                                 f"{self.n_items} products")
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            self.content = features / np.maximum(norms, 1e-10)
        self.fit_seconds = time.perf_counter() - started
        return self

    def _top_singular_vectors(self, graph: sp.csr_matrix, log: Callable[[str], None] | None
                              ) -> np.ndarray | None:
        """R~'s top right singular vectors (ARPACK on the sparse graph; dense when small)."""
        k = min(self.factors, min(graph.shape) - 1)
        if self.factors == 0 or self.ideal_weight == 0 or k < 1:
            return None
        started = time.perf_counter()
        if min(graph.shape) <= 2 * k + 1 or graph.shape[0] * graph.shape[1] <= 4_000_000:
            _, _, vt = np.linalg.svd(graph.toarray().astype(np.float64), full_matrices=False)
            vectors = vt[:k].T
        elif self.solver == "arpack":
            from scipy.sparse.linalg import svds

            rng = np.random.default_rng(self.seed)
            start = rng.standard_normal(min(graph.shape))
            _, values, vt = svds(graph.astype(np.float64), k=k, v0=start)
            vectors = vt[np.argsort(-values)].T
        else:
            vectors = randomized_right_singular_vectors(graph, k, seed=self.seed)
        if log is not None:
            log(f"graph filter: top {k} singular vectors of a {graph.shape[0]:,} x "
                f"{graph.shape[1]:,} graph ({self.solver}) in "
                f"{time.perf_counter() - started:.1f} s")
        return np.ascontiguousarray(vectors, dtype=np.float32)

    # ---- scoring ---------------------------------------------------------------------------
    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted()
        history = sp.csr_matrix(user_items, dtype=np.float32)
        assert self.graph is not None and self.graph_t is not None
        through_rows = spread_rows(self.graph_t, history)
        if through_rows is not None:  # one user (serving): gather rows, no sparse product
            scores = spread_rows(self.graph, sp.csr_matrix(through_rows))
            assert scores is not None
        else:
            scores = np.asarray((history @ self.graph_t @ self.graph).todense(),
                                dtype=np.float32)
        if self.low_pass is not None and self.item_scale is not None:
            scale = np.where(self.item_scale > 0, 1.0 / np.maximum(self.item_scale, 1e-10), 0)
            projected = np.asarray(history @ sp.diags(scale.astype(np.float32))
                                   @ self.low_pass, dtype=np.float32)
            scores += self.ideal_weight * ((projected @ self.low_pass.T) * self.item_scale)
        if self.content is not None:
            scores += self.content_weight * (np.asarray(history @ self.content) @ self.content.T)
        return scores

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Products the filter spreads `item` to most (itself excluded)."""
        self._check_fitted()
        row = sp.csr_matrix(([1.0], ([0], [int(item)])), shape=(1, self.n_items))
        scores = self.score(np.zeros(1, dtype=np.int64), row)
        scores[0, int(item)] = -np.inf
        ids, values = top_k(scores, k)
        keep = ids[0] >= 0
        return ids[0][keep], values[0][keep]

    def reason(self, seen: np.ndarray, item: int, name: str, value: float) -> Reason | None:
        """The history product whose filtered signal reaches `item` most."""
        if not len(seen):
            return None
        rows = sp.csr_matrix((np.ones(len(seen), dtype=np.float32),
                              (np.arange(len(seen)), seen)), shape=(len(seen), self.n_items))
        reach = self.score(np.zeros(len(seen), dtype=np.int64), rows)[:, int(item)]
        return Reason(name, value, int(seen[int(np.argmax(reach))]))

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """The normalised graph (`graph.npz`), the filter's vectors and its parameters."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        assert self.graph is not None and self.item_scale is not None
        sp.save_npz(directory / "graph.npz", self.graph)
        arrays = {"item_scale": self.item_scale}
        if self.low_pass is not None:
            arrays["low_pass"] = self.low_pass
        if self.content is not None:
            arrays["content"] = self.content
        np.savez(directory / "filter.npz", **arrays)
        (directory / META_FILE).write_text(json.dumps(
            {**self.config(), "n_users": self.n_users, "n_items": self.n_items,
             "fit_seconds": self.fit_seconds}))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> GraphFilterRecommender:
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        model = cls(**{key: meta[key] for key in (
            "factors", "ideal_weight", "row_exponent", "item_exponent", "kg_weight",
            "content_weight", "seed") if key in meta}, solver=meta.get("solver", "arpack"))
        model.graph = sp.load_npz(directory / "graph.npz").tocsr().astype(np.float32)
        model.graph_t = model.graph.T.tocsr()
        with np.load(directory / "filter.npz") as arrays:
            model.item_scale = arrays["item_scale"]
            model.low_pass = arrays["low_pass"] if "low_pass" in arrays else None
            model.content = arrays["content"] if "content" in arrays else None
        model.n_users, model.n_items = int(meta["n_users"]), int(meta["n_items"])
        model.fit_seconds = float(meta.get("fit_seconds", 0.0))
        return model
