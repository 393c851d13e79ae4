"""The hybrid recommender: graph paths, recency weights, blending, tuning, MMR, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from kg.embedded import EmbeddedStore
from kg.export import export_graph
from recommender.als import ALSRecommender
from recommender.base import Recommender
from recommender.baselines import ItemKNN, Popularity
from recommender.evaluation import evaluate
from recommender.graph_paths import GraphPathRecommender, product_links
from recommender.history import confidence, history_matrix, recency_weights
from recommender.hybrid import HybridRecommender, mmr, zscores
from tests.shop_graph import small_shop
from tests.test_recommenders import RecommenderConformance, planted


def planted_hybrid(seed: int = 0, candidates: int = 200) -> HybridRecommender:
    return HybridRecommender({
        "als": ALSRecommender(factors=8, regularization=0.1, alpha=10.0, iterations=10,
                              seed=seed),
        "copurchase": ItemKNN(neighbours=20),
        "popularity": Popularity(),
    }, candidates=candidates)


class TestHybrid(RecommenderConformance):
    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return planted_hybrid(seed)


def test_tuning_uses_validation_only_and_is_no_worse_than_any_source() -> None:
    train, test, _ = planted()
    rng = np.random.default_rng(1)
    mask = sp.csr_matrix(train.multiply(rng.random(train.shape) < 0.2))
    mask.eliminate_zeros()
    fit = (train - mask).tocsr()
    fit.eliminate_zeros()
    model = planted_hybrid()
    tuning = model.tune(fit, mask, grid=(0.0, 0.5, 1.0, 2.0))
    best_single = max(v["ndcg@20"] for v in tuning["single"].values())
    assert tuning["valid_ndcg@20"] >= best_single
    assert set(tuning["weights"]) == {"als", "copurchase", "popularity"}
    assert model.weights == tuning["weights"]
    # the test matrix was never passed in; refit on all training rows and score it
    model.fit(train)
    assert evaluate(model, train, test, k=10)["recall@10"] > 0.2


def test_candidates_restrict_the_blend() -> None:
    train, _, _ = planted()
    model = planted_hybrid(candidates=5).fit(train)
    scores = model.score(np.array([0]), train[[0]])
    seen = train[0].indices
    finite = np.flatnonzero(np.isfinite(scores[0]))
    unseen_finite = np.setdiff1d(finite, seen)
    assert 5 <= len(unseen_finite) <= 15  # the union of three sources' top 5
    unrestricted = model.blend(0, train[[0]], restrict=False)
    assert np.isfinite(unrestricted).all()


def test_bad_weights_are_rejected() -> None:
    model = planted_hybrid()
    with pytest.raises(ValueError, match="unknown sources"):
        model.set_weights({"nope": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        model.set_weights({"als": -1.0})
    with pytest.raises(ValueError, match="at least one"):
        model.set_weights({"als": 0.0})


def test_save_and_load_give_the_same_scores(tmp_path) -> None:
    train, _, _ = planted()
    model = planted_hybrid().fit(train)
    model.set_weights({"als": 1.0, "copurchase": 0.5, "popularity": 0.1})
    model.save(tmp_path / "h")
    loaded = HybridRecommender.load(tmp_path / "h")
    rows = np.arange(10)
    np.testing.assert_allclose(loaded.score(rows, train[rows]), model.score(rows, train[rows]))
    assert loaded.weights == model.weights
    with pytest.raises(FileNotFoundError, match="shopgraph train"):
        HybridRecommender.load(tmp_path / "missing")


def test_zscores_and_mmr() -> None:
    z = zscores(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(z[0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    assert (z[1] == 0).all()
    vectors = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [1.0, 0.02]])
    items, scores = np.arange(4), np.array([4.0, 3.0, 2.0, 1.0])
    kept, _ = mmr(items, scores, vectors, 3, 0.0)
    assert list(kept) == [0, 1, 2]
    diverse, _ = mmr(items, scores, vectors, 2, 0.7)
    assert list(diverse) == [0, 2]  # item 1 is a near-copy of item 0
    with pytest.raises(ValueError):
        mmr(items, scores, vectors, 2, 1.5)


def test_recency_weights_halve_every_half_life() -> None:
    frame = pd.DataFrame({"user": [0, 0, 0, 0, 1], "item": [3, 4, 5, 3, 4],
                          "ts": [10, 20, 30, 40, 5]})
    weights = recency_weights(frame, half_life=1.0)
    by_pair = {(u, i): w for u, i, w in weights[["user", "item", "weight"]].itertuples(
        index=False)}
    assert by_pair == {(0, 4): 0.25, (0, 5): 0.5, (0, 3): 1.0, (1, 4): 1.0}
    matrix = history_matrix(frame, (2, 6), half_life=None)
    assert matrix.nnz == 4 and set(matrix.data) == {1.0}
    with pytest.raises(ValueError, match="half_life"):
        recency_weights(frame, half_life=0)


def test_confidence_grows_with_kind_and_count() -> None:
    # user 0: one purchase of 1, three purchases of 2 (one row with count 3), one view of 3;
    # user 1: a view, then a cart, of 1 (one pair, two kinds), and an unlisted kind for 2
    frame = pd.DataFrame({"user": [0, 0, 0, 1, 1, 1], "item": [1, 2, 3, 1, 1, 2],
                          "ts": [1, 2, 3, 1, 2, 3],
                          "kind": ["purchase", "purchase", "view", "view", "cart", "rating"],
                          "count": [1, 3, 1, 1, 1, 1]})
    weights = {"purchase": 1.0, "cart": 0.5, "view": 0.2}
    by_pair = {(u, i): c for u, i, c in confidence(frame, weights).itertuples(index=False)}
    assert by_pair[(0, 1)] == pytest.approx(1.0)  # a single purchase weighs 1
    assert by_pair[(0, 2)] == pytest.approx(2.0)  # log2(1 + 3)
    assert by_pair[(0, 3)] == pytest.approx(np.log2(1.2))
    assert by_pair[(1, 1)] == pytest.approx(np.log2(1.7))  # view + cart add up
    assert by_pair[(1, 2)] == pytest.approx(1.0)  # a kind not listed counts as 1
    plain = history_matrix(frame, (2, 4), half_life=None)
    weighted = history_matrix(frame, (2, 4), half_life=None, kind_weights=weights)
    assert set(plain.data) == {1.0}
    assert weighted[0, 2] > weighted[0, 1] > weighted[0, 3]
    # recency and confidence multiply: item 3 is user 0's latest (recency 1), item 1 oldest
    both = history_matrix(frame, (2, 4), half_life=1.0, kind_weights=weights)
    assert both[0, 3] == pytest.approx(np.log2(1.2))
    assert both[0, 1] == pytest.approx(0.25)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):  # noqa: ANN201
    store = EmbeddedStore(tmp_path_factory.mktemp("shop") / "graph")
    store.load(small_shop())
    snapshot = export_graph(store)
    store.close()
    return snapshot


def test_graph_paths_score_and_explain(shop) -> None:  # noqa: ANN001
    links = product_links(shop)
    assert {"brand", "category", "attribute"} <= set(links)
    ids = shop.ids["Product"]
    row = {p: i for i, p in enumerate(ids)}
    brand = GraphPathRecommender(links["brand"])
    user_items = sp.csr_matrix(([1.0], ([0], [row["p1"]])), shape=(1, len(ids)))
    brand.fit(user_items)
    scores = brand.score(np.array([0]), user_items)[0]
    # p2 shares p1's brand (Acme); p5 (Zeta) shares nothing with it
    assert scores[row["p2"]] > 0 and scores[row["p5"]] == 0
    node, holder = brand.explain(np.array([row["p1"]]), row["p2"])
    assert links["brand"].node_names[node] == "Acme" and holder == row["p1"]
    similar, _ = brand.similar_items(row["p1"], k=5)
    assert row["p2"] in similar and row["p1"] not in similar


def test_graph_paths_round_trip(shop, tmp_path) -> None:  # noqa: ANN001
    links = product_links(shop)["category"]
    model = GraphPathRecommender(links).fit(sp.csr_matrix((1, links.incidence.shape[0])))
    model.save(tmp_path / "cat")
    loaded = GraphPathRecommender.load(tmp_path / "cat")
    history = sp.csr_matrix(np.eye(1, links.incidence.shape[0], 2, dtype=np.float32))
    np.testing.assert_allclose(loaded.score(np.array([0]), history),
                               model.score(np.array([0]), history))
    assert loaded.links.node_names == links.node_names
