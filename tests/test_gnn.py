"""The graph recommender (LightGCN, optionally over KG edges and product features).

Shared behaviour comes from `RecommenderConformance`; the rest checks what only this model
promises: KG edges carry brand structure, test edges in the graph never leak into training,
seeds reproduce, checkpoints round-trip and product features place products without
interactions. Configurations are tiny so the file stays fast on a busy CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from encoders.gnn import GraphRecommender, build_adjacency  # noqa: E402
from recommender.base import Recommender  # noqa: E402
from recommender.evaluation import evaluate  # noqa: E402
from tests.test_recommenders import (  # noqa: E402
    N_ITEMS,
    N_USERS,
    PER_CLUSTER,
    RecommenderConformance,
    planted,
)


def fast(seed: int = 0, **overrides: object) -> GraphRecommender:
    params: dict = dict(dim=16, layers=2, epochs=15, batch_size=512, learning_rate=0.02,
                        regularization=1e-4, seed=seed, num_threads=1)
    params.update(overrides)
    return GraphRecommender(**params)


class TestGraphRecommender(RecommenderConformance):
    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return fast(seed)


# ---- a synthetic catalogue whose users follow brands ----------------------------------------
N_BRANDS, PER_BRAND, KG_USERS = 8, 12, 240


def brand_world(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix, object, np.ndarray]:
    """(train, test, HeteroData with made_by edges, brand of each product).

    Each user likes one brand and touched a few of its products; training is sparse, so
    products with few interactions are placed mainly through their brand node. The graph
    also holds the test interactions as user edges, which the model must ignore.
    """
    from torch_geometric.data import HeteroData

    rng = np.random.default_rng(seed)
    n_products = N_BRANDS * PER_BRAND
    brand = np.arange(n_products) // PER_BRAND
    taste = rng.integers(0, N_BRANDS, size=KG_USERS)
    train = np.zeros((KG_USERS, n_products), dtype=np.float32)
    test = np.zeros_like(train)
    for user, liked in enumerate(taste):
        picks = rng.choice(np.flatnonzero(brand == liked), size=5, replace=False)
        train[user, picks[:3]] = 1.0
        test[user, picks[3:]] = 1.0
        train[user, rng.integers(0, n_products)] = 1.0  # a little noise
    test[train > 0] = 0.0
    graph = HeteroData()
    graph["product"].num_nodes = n_products
    graph["brand"].num_nodes = N_BRANDS
    graph["user"].num_nodes = KG_USERS
    graph["product", "made_by", "brand"].edge_index = torch.as_tensor(
        np.vstack([np.arange(n_products), brand]), dtype=torch.long)
    every = sp.coo_matrix(train + test)
    graph["user", "interacted", "product"].edge_index = torch.as_tensor(
        np.vstack([every.row, every.col]), dtype=torch.long)
    return sp.csr_matrix(train), sp.csr_matrix(test), graph, brand


def test_kg_edges_carry_brand_structure() -> None:
    train, test, graph, brand = brand_world()
    plain = fast(epochs=30).fit(train)
    aware = fast(epochs=30).fit(train, graph=graph)
    emb = aware.item_embeddings / np.linalg.norm(aware.item_embeddings, axis=1, keepdims=True)
    cos = emb @ emb.T
    same = brand[:, None] == brand[None, :]
    np.fill_diagonal(same, False)
    off = ~same
    np.fill_diagonal(off, False)
    assert cos[same].mean() > cos[off].mean() + 0.3
    recall_plain = evaluate(plain, train, test, k=10)["recall@10"]
    recall_aware = evaluate(aware, train, test, k=10)["recall@10"]
    assert recall_aware > recall_plain, (recall_aware, recall_plain)


def test_graph_user_edges_never_used() -> None:
    train, _, graph, _ = brand_world()
    with_kg, offsets = build_adjacency(train, graph)
    del graph["user", "interacted", "product"]
    without_user_edges, _ = build_adjacency(train, graph)
    assert (with_kg != without_user_edges).nnz == 0
    assert offsets["brand"] == (KG_USERS + train.shape[1], KG_USERS + train.shape[1] + N_BRANDS)
    users, products = slice(0, KG_USERS), slice(KG_USERS, KG_USERS + train.shape[1])
    np.testing.assert_array_equal(with_kg[users, products].toarray() > 0, train.toarray() > 0)
    np.testing.assert_allclose((with_kg - with_kg.T).data, 0, atol=1e-7)  # undirected


def test_kg_leaves_are_pruned() -> None:
    train, _, graph, _ = brand_world()
    graph["entity"].num_nodes = 4  # 0: two products; 1: one product; 2-3: a chain off 1
    graph["product", "same_as", "entity"].edge_index = torch.as_tensor([[0, 1, 2], [0, 0, 1]])
    graph["entity", "rel", "entity"].edge_index = torch.as_tensor([[1, 2], [2, 3]])
    pruned, offsets = build_adjacency(train, graph)
    full, full_offsets = build_adjacency(train, graph, prune=False)
    first = KG_USERS + train.shape[1] + N_BRANDS
    assert full_offsets["entity"] == (first, first + 4)
    assert offsets["entity"] == (first, first + 1)  # only entity 0 links two products
    assert pruned.shape[0] == full.shape[0] - 3


def test_edge_weight_zero_drops_a_type() -> None:
    train, _, graph, _ = brand_world()
    plain, _ = build_adjacency(train)
    dropped, offsets = build_adjacency(train, graph, {"made_by": 0.0})
    assert dropped.shape == plain.shape and "brand" not in offsets


def test_seed_reproduces_and_differs() -> None:
    train, _, graph, _ = brand_world()
    first = fast(seed=3, epochs=3).fit(train, graph=graph)
    second = fast(seed=3, epochs=3).fit(train, graph=graph)
    other = fast(seed=4, epochs=3).fit(train, graph=graph)
    np.testing.assert_array_equal(first.item_embeddings, second.item_embeddings)
    assert not np.array_equal(first.item_embeddings, other.item_embeddings)
    assert len(first.epoch_seconds) == 3 and min(first.epoch_seconds) > 0


def test_fit_without_interactions_still_scores() -> None:
    empty = sp.csr_matrix((5, 7), dtype=np.float32)
    model = fast(epochs=1).fit(empty)
    assert np.isfinite(model.score(np.arange(5), empty)).all()


def test_save_load_round_trip(tmp_path) -> None:  # noqa: ANN001
    train, _, graph, _ = brand_world()
    features = np.random.default_rng(0).normal(size=(train.shape[1], 5)).astype(np.float32)
    model = fast(epochs=3).fit(train, graph=graph, product_features=features)
    model.save(tmp_path / "gnn")
    loaded = GraphRecommender.load(tmp_path / "gnn")
    rows = np.arange(20)
    np.testing.assert_array_equal(loaded.score(rows, train[rows]), model.score(rows, train[rows]))
    assert loaded.config() == model.config() and loaded.offsets == model.offsets
    unseen = sp.csr_matrix(train[:1])
    np.testing.assert_array_equal(loaded.score([KG_USERS + 3], unseen),
                                  model.score([KG_USERS + 3], unseen))
    np.testing.assert_array_equal(loaded.embed_new_products(features[:2]),
                                  model.embed_new_products(features[:2]))


def test_early_stopping_keeps_best_epoch() -> None:
    train, test, _, _ = brand_world()
    model = fast(epochs=12, eval_every=2, patience=2, eval_k=10).fit(train, valid=test)
    recalls = [h["recall@10"] for h in model.history]
    assert model.history and model.best_epoch == model.history[int(np.argmax(recalls))]["epoch"]
    assert evaluate(model, train, test, k=10)["recall@10"] == pytest.approx(max(recalls))


def test_features_place_products_without_interactions() -> None:
    train, _, cluster = planted()
    item_cluster = np.arange(N_ITEMS) // PER_CLUSTER
    rng = np.random.default_rng(0)
    features = np.eye(4, dtype=np.float32)[item_cluster] + rng.normal(
        scale=0.1, size=(N_ITEMS, 4)).astype(np.float32)
    cold = 2  # a cluster-0 product nobody interacted with in training
    train = train.tolil()
    train[:, cold] = 0
    train = sp.csr_matrix(train)
    train.eliminate_zeros()
    model = fast(epochs=20).fit(train, product_features=features)
    scores = model.score(np.arange(N_USERS), train)[:, cold]
    active = np.diff(train.indptr) > 0
    fans, others = (cluster == 0) & active, (cluster != 0) & active
    assert scores[fans].mean() > scores[others].mean()
    # a product added after training, with cluster-1 features: cluster-1 users rank it highest
    new = model.embed_new_products(np.eye(4, dtype=np.float32)[1])
    new_scores = model.user_embeddings @ new[0]
    by_cluster = [new_scores[(cluster == c) & active].mean() for c in range(4)]
    assert int(np.argmax(by_cluster)) == 1, by_cluster
    with pytest.raises(RuntimeError):
        fast(epochs=1).fit(train).embed_new_products(features[:1])
    with pytest.raises(ValueError):
        fast(epochs=1).fit(train, product_features=features[:5])
