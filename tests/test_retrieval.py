"""Candidate retrieval through faiss: exact where the index is flat, close where it is HNSW,
and what the hybrid uses for its embedding sources."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recommender.base import top_k
from recommender.gnn import GraphRecommender
from recommender.hybrid import HybridRecommender
from recommender.retrieval import EmbeddingRetriever
from tests.test_recommenders import RecommenderConformance, planted


def exact_unseen(queries: np.ndarray, items: np.ndarray, history: sp.csr_matrix, n: int
                 ) -> np.ndarray:
    scores = queries @ items.T
    rows, cols = history.nonzero()
    scores[rows, cols] = -np.inf
    return top_k(scores, n)[0]


def world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(3000, 16)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    # each user has seen some of their own best items, so exclusion matters
    best = exact_unseen(queries, items, sp.csr_matrix((40, 3000)), 30)
    history = sp.lil_matrix((40, 3000), dtype=np.float32)
    for row in range(40):
        history[row, best[row, : row % 7 * 3]] = 1.0
    return queries, items, history.tocsr()


def test_flat_index_gives_the_exact_unseen_top_n() -> None:
    queries, items, history = world()
    found = EmbeddingRetriever(items, kind="flat").candidates(queries, history, 50)
    assert found.shape == (40, 50)
    np.testing.assert_array_equal(found, exact_unseen(queries, items, history, 50))
    assert not any(set(found[r]) & set(history[r].indices) for r in range(40))


def test_hnsw_index_finds_nearly_all_of_them() -> None:
    queries, items, history = world(1)
    retriever = EmbeddingRetriever(items, kind="hnsw", exact_threshold=1000)
    assert retriever.index.kind == "hnsw"
    found = retriever.candidates(queries, history, 50)
    exact = exact_unseen(queries, items, history, 50)
    recall = np.mean([len(set(f) & set(e)) / 50 for f, e in zip(found, exact)])
    assert recall >= 0.9
    assert not any(set(found[r]) & set(history[r].indices) for r in range(40))


def test_more_candidates_than_items_pads_with_minus_one() -> None:
    items = np.eye(4, dtype=np.float32)
    history = sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32))
    found = EmbeddingRetriever(items).candidates(np.ones((1, 4), np.float32), history, 10)
    assert sorted(found[0][found[0] >= 0]) == [1, 2, 3] and (found[0] == -1).sum() == 1


def fitted_gnn(train: sp.csr_matrix) -> GraphRecommender:
    torch.set_num_threads(1)
    return GraphRecommender(dim=16, layers=2, epochs=10, batch_size=512, learning_rate=0.02,
                            seed=0, num_threads=1).fit(train)


def test_the_hybrid_takes_gnn_candidates_from_the_faiss_index() -> None:
    train, _, _ = planted()
    gnn = fitted_gnn(train)
    hybrid = HybridRecommender({"gnn": gnn}, candidates=15)
    hybrid.n_users, hybrid.n_items = train.shape
    rows = np.arange(20)
    blended = hybrid.blend(rows, train[rows])
    retriever = hybrid.retriever("gnn")
    assert retriever is not None and retriever.source_vectors is gnn.item_embeddings
    expected = retriever.candidates(gnn.user_vectors(rows, train[rows]), train[rows], 15)
    for r in range(20):
        kept = set(np.flatnonzero(np.isfinite(blended[r]))) - set(train[r].indices)
        assert kept == set(expected[r])
    # and the index answers what the GNN's own scores would (flat index: exact)
    np.testing.assert_array_equal(
        expected, exact_unseen(gnn.user_vectors(rows, train[rows]), gnn.item_embeddings,
                               train[rows], 15))
    # a refit replaces the item vectors: the next query rebuilds the index
    gnn.fit(train)
    assert hybrid.retriever("gnn").source_vectors is gnn.item_embeddings


class TestHybridWithGnn(RecommenderConformance):
    """The hybrid over a GNN (faiss candidates) passes the conformance suite too."""

    @classmethod
    def make(cls, seed: int = 0) -> HybridRecommender:
        return HybridRecommender({"gnn": GraphRecommender(
            dim=16, layers=2, epochs=10, batch_size=512, learning_rate=0.02, seed=seed,
            num_threads=1)}, candidates=200)  # >= the items: every score finite
