"""The closed-form graph filter: conformance, the GF-CF formula itself, KG rows, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.base import Recommender
from recommender.graph_filter import GraphFilterRecommender, randomized_right_singular_vectors
from tests.test_recommenders import RecommenderConformance, planted


class TestGraphFilter(RecommenderConformance):
    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return GraphFilterRecommender(factors=8, ideal_weight=0.3, seed=seed)


def gf_cf_reference(train: sp.csr_matrix, history: np.ndarray, factors: int, alpha: float
                    ) -> np.ndarray:
    """GF-CF written out densely from the paper's formulas, independent of the class."""
    r = (train.toarray() > 0).astype(np.float64)
    du, di = r.sum(1), r.sum(0)
    with np.errstate(divide="ignore"):
        inv_u = np.where(du > 0, du ** -0.5, 0.0)
        inv_i = np.where(di > 0, di ** -0.5, 0.0)
    rn = inv_u[:, None] * r * inv_i[None, :]
    linear = rn.T @ rn
    _, _, vt = np.linalg.svd(rn)
    v = vt[:factors].T
    ideal = (inv_i[:, None] * v) @ (v.T * np.sqrt(di)[None, :])
    return history @ (linear + alpha * ideal)


def test_scores_are_gf_cf_linear_plus_ideal_low_pass() -> None:
    train, _, _ = planted()
    model = GraphFilterRecommender(factors=12, ideal_weight=0.3).fit(train)
    users = np.arange(20)
    got = model.score(users, train[users])
    want = gf_cf_reference(train, train[users].toarray(), 12, 0.3)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_one_user_path_equals_batch_path() -> None:
    train, _, _ = planted()
    model = GraphFilterRecommender(factors=8).fit(train)
    batch = model.score(np.arange(5), train[:5])
    for user in range(5):
        np.testing.assert_allclose(model.score(np.array([user]), train[user])[0], batch[user],
                                   rtol=1e-4, atol=1e-6)


def test_knowledge_graph_rows_reach_products_nobody_bought() -> None:
    # items 0-2 bought together; item 3 never bought but shares a brand with item 0
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0]],
                                   dtype=np.float32))
    brand = sp.csr_matrix(np.array([[1], [0], [0], [1]], dtype=np.float32))  # items x brands
    history = sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32))
    plain = GraphFilterRecommender(factors=0).fit(train, item_links=brand)
    with_kg = GraphFilterRecommender(factors=0, kg_weight=1.0).fit(train, item_links=brand)
    assert plain.score(np.array([0]), history)[0, 3] == 0
    assert with_kg.score(np.array([0]), history)[0, 3] > 0
    with pytest.raises(ValueError, match="item_links has 3 products"):
        GraphFilterRecommender(kg_weight=1.0).fit(train, item_links=brand[:3])


def test_content_vectors_join_the_filter() -> None:
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=np.float32))
    features = np.array([[1, 0], [0, 1], [1, 0.1], [0, 1]], dtype=np.float32)
    history = sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32))
    model = GraphFilterRecommender(factors=0, content_weight=1.0).fit(
        train, product_features=features)
    scores = model.score(np.array([0]), history)[0]
    assert scores[2] > scores[3]  # item 2 looks like the history item, item 3 does not


def test_save_load_round_trip_and_reason(tmp_path) -> None:
    train, _, _ = planted()
    model = GraphFilterRecommender(factors=8, kg_weight=0.5).fit(
        train, item_links=sp.identity(train.shape[1], format="csr"))
    GraphFilterRecommender.load(model.save(tmp_path / "gf"))
    loaded = GraphFilterRecommender.load(tmp_path / "gf")
    np.testing.assert_allclose(loaded.score(np.arange(10), train[:10]),
                               model.score(np.arange(10), train[:10]), rtol=1e-6)
    assert loaded.config() == model.config()
    # the reason is the history item that alone spreads most onto the recommended one
    seen = train[0].indices
    item = int(model.recommend(0, train[0], k=1)[0][0])
    reason = model.reason(seen, item, "graph_filter", 1.0)
    alone = [model.score(np.zeros(1, dtype=np.int64), sp.csr_matrix(
        ([1.0], ([0], [s])), shape=(1, train.shape[1])))[0, item] for s in seen]
    assert reason is not None and reason.because_of == int(seen[int(np.argmax(alone))])


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="factors"):
        GraphFilterRecommender(factors=-1)
    with pytest.raises(ValueError, match="kg_weight"):
        GraphFilterRecommender(kg_weight=-0.1)


def test_randomized_singular_vectors_span_the_exact_top_subspace() -> None:
    rng = np.random.default_rng(3)
    low_rank = rng.random((600, 12)) @ rng.random((12, 500))
    matrix = sp.csr_matrix(low_rank + 0.01 * rng.random((600, 500)))
    got = randomized_right_singular_vectors(matrix, 12)
    exact = np.linalg.svd(matrix.toarray(), full_matrices=False)[2][:12].T
    overlap = np.linalg.svd(got.T @ exact, compute_uv=False)  # cosines of principal angles
    assert got.shape == (500, 12) and overlap.min() > 0.999


def test_randomized_and_arpack_fits_rank_alike_on_a_sparse_graph() -> None:
    # big enough (2,100 x 2,000) to leave the dense path; clustered like real baskets
    rng = np.random.default_rng(5)
    users, items = 2100, 2000
    taste = rng.integers(0, 20, users)
    cols = (taste[:, None] * 100 + rng.integers(0, 100, (users, 15))).ravel()
    noise = rng.integers(0, items, users * 3)
    rows = np.concatenate([np.repeat(np.arange(users), 15), np.repeat(np.arange(users), 3)])
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate([cols, noise]))),
                           shape=(users, items))
    fast = GraphFilterRecommender(factors=20, solver="randomized").fit(matrix)
    exact = GraphFilterRecommender(factors=20, solver="arpack").fit(matrix)
    sample = np.arange(0, users, 50)
    a = fast.recommend(sample, matrix[sample], k=20)[0]
    b = exact.recommend(sample, matrix[sample], k=20)[0]
    agreement = np.mean([len(set(x) & set(y)) / 20 for x, y in zip(a, b)])
    assert agreement > 0.95
    with pytest.raises(ValueError, match="solver"):
        GraphFilterRecommender(solver="lanczos")
