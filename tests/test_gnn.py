"""The graph recommender (LightGCN, optionally over KG edges and product features).

Shared behaviour comes from `RecommenderConformance`; the rest checks what only this model
promises: KG edges carry brand structure, test edges in the graph never leak into training,
seeds reproduce, checkpoints round-trip and product features place products without
interactions. Configurations are tiny so the file stays fast on a busy CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from encoders.gnn import LightGCNEncoder, NeighbourSampler, build_adjacency  # noqa: E402
from recommender.base import Recommender  # noqa: E402
from recommender.evaluation import evaluate  # noqa: E402
from recommender.gnn import GraphRecommender  # noqa: E402
from tests.test_recommenders import (  # noqa: E402
    N_ITEMS,
    N_USERS,
    PER_CLUSTER,
    RecommenderConformance,
    planted,
    random_recall,
)


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """One torch thread per test (the fits ask for it; direct sampler calls would not): two
    threads on a busy 2-core machine made a 0.6 s test take 11 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# ---- neighbour sampling -----------------------------------------------------------------------
class TestGraphRecommenderNeighbour(RecommenderConformance):
    """The whole conformance suite again, every batch propagating a sampled neighbourhood."""

    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return fast(seed, sampling="neighbour", fanout=(5, 3))


def cluster_world(n_users: int = 2000, n_clusters: int = 10, per_cluster: int = 60,
                  per_user: int = 8, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(train, test): each user takes `per_user` products of one cluster, a fifth held out.

    Big enough (2.6k nodes, 13k training edges) that a small batch's sampled neighbourhood
    is a small part of the graph."""
    rng = np.random.default_rng(seed)
    n_items = n_clusters * per_cluster
    taste = rng.integers(0, n_clusters, size=n_users)
    picks = taste[:, None] * per_cluster + np.argsort(
        rng.random((n_users, per_cluster)), axis=1)[:, :per_user]
    held = rng.random(picks.shape) < 0.2
    rows = np.repeat(np.arange(n_users), per_user).reshape(picks.shape)

    def matrix(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(mask.sum(), dtype=np.float32),
                              (rows[mask], picks[mask])), shape=(n_users, n_items))

    return matrix(~held), matrix(held)


def test_neighbour_sampling_bounds_nodes_per_batch_and_learns() -> None:
    """Memory per batch: the nodes a batch propagates over are bounded by batch size and
    fanouts (3 seeds per row, each expanding to at most f0 + f0 f1 more), far below the
    graph; and the sampled estimator still learns the planted clusters."""
    train, test = cluster_world()
    n_nodes = sum(train.shape)
    batch, fanout = 32, (3, 2)
    model = fast(epochs=2, batch_size=batch, sampling="neighbour", fanout=fanout,
                 learning_rate=0.05).fit(train)
    assert model.sampling_used == "neighbour"
    bound = 3 * batch * (1 + fanout[0] + fanout[0] * fanout[1])
    assert 0 < model.max_batch_nodes <= bound < n_nodes / 2, (model.max_batch_nodes, bound)
    recall = evaluate(model, train, test, k=10)["recall@10"]
    assert recall > 3 * random_recall(train, test, 10), recall


def test_sampler_respects_fanouts_and_estimates_rows_unbiasedly() -> None:
    train, _ = cluster_world(n_users=400, per_user=12)
    norm, _ = build_adjacency(train)
    degree = np.diff(norm.indptr)
    indptr, indices, values = (torch.as_tensor(a) for a in (
        norm.indptr.astype(np.int64), norm.indices.astype(np.int64), norm.data))
    sampler = NeighbourSampler(indptr, indices, values, (4, 2),
                               torch.Generator().manual_seed(0))
    small = np.flatnonzero((degree > 0) & (degree <= 4))[:2]  # products kept whole
    seeds = torch.as_tensor(np.concatenate([[0, 5, 17], small]))  # users: degree ~10 > 4
    assert (degree[[0, 5, 17]] > 4).all()
    sample = sampler.sample(seeds)
    assert torch.equal(sample.nodes[:5], seeds) and len(sample.sizes) == 3
    assert sample.sizes[1] <= 5 * (1 + 4) and sample.sizes[2] <= sampler.bound(5) == 5 * 13
    assert len(torch.unique(sample.nodes)) == len(sample.nodes)
    x = torch.randn(norm.shape[0], 3, dtype=torch.float32)
    exact = torch.as_tensor(norm[seeds.numpy()] @ x.numpy())
    estimates = []
    for _ in range(500):
        sample = sampler.sample(seeds)
        block = sample.propagation().blocks[0]
        estimates.append(block @ x[sample.nodes[: sample.sizes[1]]])
    estimates = torch.stack(estimates)
    error = (estimates.mean(0) - exact).abs()
    standard_error = estimates.std(0) / len(estimates) ** 0.5
    assert (error <= 4 * standard_error + 1e-6).all(), (error, standard_error)
    assert (standard_error[:3] > 0).all() and (standard_error[3:] < 1e-6).all()


def test_exact_neighbourhood_matches_full_propagation_and_gradient() -> None:
    """fanout -1 keeps every neighbour: a batch's final and layer-0 rows, and the gradient
    they send to every layer-0 row, must equal a dense LightGCN's, for the sampled blocks
    (their transposes) and for the full adjacency alike; rows repeat, as in real batches."""
    from encoders.gnn import Propagation, _propagated_rows

    train, _, graph, _ = brand_world()
    norm, _ = build_adjacency(train, graph)
    n = norm.shape[0]
    parts = [torch.as_tensor(a) for a in (norm.indptr.astype(np.int64),
                                          norm.indices.astype(np.int64), norm.data)]
    index = torch.as_tensor([3, 10, 3, KG_USERS + 7, KG_USERS + 50, 10])
    weights, squares = torch.randn(len(index), 8), torch.randn(len(index), 8)
    ego = torch.randn(n, 8, dtype=torch.float32, requires_grad=True)

    def gradient(final: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ego.grad = None
        ((final * weights).sum() + (rows.pow(2) * squares).sum()).backward()
        return ego.grad.clone()

    dense = torch.as_tensor(norm.toarray())
    layer, total = ego, ego
    for _ in range(3):
        layer = dense @ layer
        total = total + layer
    expected = ((total / 4)[index], ego[index])
    expected_grad = gradient(*expected)

    seeds, inverse = torch.unique(index, return_inverse=True)
    sample = NeighbourSampler(*parts, (-1, -1, -1)).sample(seeds)
    sampled = _propagated_rows().apply(ego[sample.nodes], sample.propagation(), inverse)
    full = Propagation([_csr_of(norm)] * 3, [_csr_of(norm)] * 3, [n] * 4)
    whole = _propagated_rows().apply(ego, full, index)
    for got in (sampled, whole):
        for part, want in zip(got, expected):
            torch.testing.assert_close(part, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gradient(*got), expected_grad, rtol=1e-4, atol=1e-5)


def _csr_of(matrix: sp.csr_matrix) -> torch.Tensor:
    from encoders.gnn import _csr

    return _csr(*(torch.as_tensor(a) for a in (matrix.indptr.astype(np.int64),
                                               matrix.indices.astype(np.int64), matrix.data)),
                matrix.shape)


@pytest.mark.parametrize("sampling", ["full", "neighbour"])
def test_same_seed_same_embeddings_in_both_modes(sampling: str) -> None:
    train, _, graph, _ = brand_world()
    features = np.random.default_rng(1).normal(size=(train.shape[1], 4)).astype(np.float32)

    def run(seed: int) -> GraphRecommender:
        return fast(seed=seed, epochs=2, batch_size=128, sampling=sampling, fanout=(4, 2),
                    device="cpu").fit(train, graph=graph, product_features=features)

    first, second, other = run(3), run(3), run(4)
    assert first.sampling_used == sampling
    np.testing.assert_array_equal(first.item_embeddings, second.item_embeddings)
    np.testing.assert_array_equal(first.user_embeddings, second.user_embeddings)
    assert not np.array_equal(first.item_embeddings, other.item_embeddings)


def test_auto_sampling_follows_the_size_threshold() -> None:
    train, _, _ = planted()
    nnz = build_adjacency(train)[0].nnz
    assert fast(epochs=1).fit(train).sampling_used == "full"
    assert fast(epochs=1, max_full_nnz=nnz - 1).fit(train).sampling_used == "neighbour"
    assert fast(epochs=1, sampling="neighbour").fit(train).sampling_used == "neighbour"
    with pytest.raises(ValueError):
        fast(sampling="sampled")
    with pytest.raises(ValueError):
        fast(fanout=(5, 5, 5))  # layers=2
    with pytest.raises(ValueError):
        fast(fanout=0)


def test_chunked_inference_matches_one_block() -> None:
    train, _, graph, _ = brand_world()
    whole = fast(epochs=2).fit(train, graph=graph)
    chunked = fast(epochs=2, chunk_rows=7).fit(train, graph=graph)
    np.testing.assert_allclose(chunked.item_embeddings, whole.item_embeddings, atol=1e-6)
    np.testing.assert_allclose(chunked.user_embeddings, whole.user_embeddings, atol=1e-6)


def test_device_auto_and_cpu_load_of_a_gpu_checkpoint(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    assert GraphRecommender().device == "auto"
    assert fast(device="auto").encoder._torch_device().type == (
        "cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fast(device="auto").encoder._torch_device().type == "cuda"
    monkeypatch.undo()
    train, _, _ = planted()
    model = fast(epochs=1).fit(train)
    model.save(tmp_path / "gnn")
    meta = json.loads((tmp_path / "gnn" / "config.json").read_text())
    meta["config"]["device"] = "cuda"  # as written by a model trained on a GPU
    (tmp_path / "gnn" / "config.json").write_text(json.dumps(meta))
    rows = np.arange(10)
    for device in ("cpu", None):
        if device is None and torch.cuda.is_available():
            continue
        loaded = GraphRecommender.load(tmp_path / "gnn", device=device)
        assert loaded.network.embedding.weight.device.type == "cpu"
        np.testing.assert_array_equal(loaded.score(rows, train[rows]),
                                      model.score(rows, train[rows]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampling", ["full", "neighbour"])
def test_cuda_fit_then_cpu_load(tmp_path, sampling: str) -> None:  # noqa: ANN001
    """Every tensor path on the GPU: sampling, negatives, features, validation, checkpoint."""
    train, test, graph, _ = brand_world()
    features = np.random.default_rng(0).normal(size=(train.shape[1], 5)).astype(np.float32)
    model = fast(epochs=6, eval_every=2, device="cuda", sampling=sampling, fanout=(4, 2)).fit(
        train, graph=graph, product_features=features, valid=test)
    assert model.network.embedding.weight.device.type == "cuda" and model.history
    assert evaluate(model, train, test, k=10)["recall@10"] > 1.2 * random_recall(train, test, 10)
    model.save(tmp_path / "gnn")
    loaded = GraphRecommender.load(tmp_path / "gnn", device="cpu")
    rows = np.arange(20)
    np.testing.assert_array_equal(loaded.score(rows, train[rows]), model.score(rows, train[rows]))
    np.testing.assert_allclose(loaded.embed_new_products(features[:2]),
                               model.embed_new_products(features[:2]), rtol=1e-5, atol=1e-6)


def test_from_embeddings_scores_like_the_trained_model() -> None:
    train, _, _ = planted()
    model = fast(epochs=3).fit(train)
    active = np.diff(train.indptr) > 0
    copy = GraphRecommender.from_embeddings(model.user_embeddings, model.item_embeddings,
                                            active)
    rows = np.array([0, 3, len(active) - 1])  # the last planted user has no history
    np.testing.assert_allclose(copy.score(rows, train[rows]), model.score(rows, train[rows]),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="active_users"):
        GraphRecommender.from_embeddings(model.user_embeddings, model.item_embeddings,
                                         active[:-1])


def test_user_uniform_pairs_weigh_every_user_alike() -> None:
    """pairs="users" (LightGCN's sampler): users drawn uniformly, each with a real positive."""
    heavy = np.ones((1, 100), dtype=np.float32)
    light = np.zeros((2, 100), dtype=np.float32)
    light[0, 7] = 1.0  # user 1 has one product, user 2 none
    matrix = sp.csr_matrix(np.vstack([heavy, light]))
    users, items = LightGCNEncoder._user_pairs(matrix, 4000, np.random.default_rng(0))
    assert len(users) == len(items) == 4000
    assert set(users) == {0, 1} and abs(np.mean(users == 1) - 0.5) < 0.05
    assert (items[users == 1] == 7).all() and len(set(items[users == 0])) > 90
    model = fast(pairs="users", epochs=3).fit(planted()[0])
    assert model.config()["pairs"] == "users"
    with pytest.raises(ValueError, match="pairs"):
        GraphRecommender(pairs="everything")
