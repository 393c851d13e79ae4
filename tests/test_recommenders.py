"""Every recommender passes one conformance suite (`RecommenderConformance`), as in implicit.

The data has planted structure: users belong to one of four taste clusters of unequal size,
each cluster owns 30 items whose appeal falls with their rank inside the cluster, and a little
noise crosses clusters. A fifth of each user's interactions is held out, so a model that
learns anything scores the held-out items well above random, and even popularity beats it
(bigger clusters make their items popular). Adding a model = one subclass with `make`.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.als import ALSRecommender
from recommender.base import Recommender
from recommender.baselines import BPRMF, ItemKNN, Popularity
from recommender.evaluation import evaluate

N_CLUSTERS, PER_CLUSTER, N_USERS = 4, 30, 400
N_ITEMS = N_CLUSTERS * PER_CLUSTER
K = 10


@cache
def planted(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """(train, test, user cluster); the last user has no history at all."""
    rng = np.random.default_rng(seed)
    cluster = rng.choice(N_CLUSTERS, size=N_USERS, p=[0.4, 0.3, 0.2, 0.1])
    item_cluster = np.arange(N_ITEMS) // PER_CLUSTER
    rank = np.arange(N_ITEMS) % PER_CLUSTER
    appeal = 0.05 + 0.6 * (1 - rank / PER_CLUSTER)
    prob = np.where(item_cluster[None, :] == cluster[:, None], appeal[None, :], 0.02)
    liked = rng.random((N_USERS, N_ITEMS)) < prob
    liked[-1] = False
    held = liked & (rng.random(liked.shape) < 0.2)
    train = sp.csr_matrix((liked & ~held).astype(np.float32))
    test = sp.csr_matrix(held.astype(np.float32))
    return train, test, cluster


def random_recall(train: sp.csr_matrix, test: sp.csr_matrix, k: int) -> float:
    """Expected Recall@k of a uniformly random ranking of the unseen items."""
    users = np.flatnonzero(np.diff(test.indptr))
    candidates = train.shape[1] - np.diff(train.indptr)[users]
    return float(np.mean(np.minimum(k, candidates) / candidates))


class RecommenderConformance:
    """What every `Recommender` must do; subclasses say how to build one."""

    min_lift = 3.0  # Recall@10 on held-out items, as a multiple of a random ranking's
    has_similar_items = True

    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls) -> Recommender:
        train, _, _ = planted()
        return cls.make().fit(train)

    def test_fit_returns_self_and_records_shape(self) -> None:
        train, _, _ = planted()
        model = self.make()
        assert model.fit(train) is model
        assert (model.n_users, model.n_items) == train.shape

    def test_score_shape(self, fitted: Recommender) -> None:
        train, _, _ = planted()
        rows = np.array([0, 5, 7])
        scores = fitted.score(rows, train[rows])
        assert scores.shape == (3, N_ITEMS)
        assert np.isfinite(scores).all()

    def test_recommend_excludes_seen_items(self, fitted: Recommender) -> None:
        train, _, _ = planted()
        rows = np.arange(50)
        ids, scores = fitted.recommend(rows, train[rows], k=K)
        assert ids.shape == scores.shape == (50, K)
        for row, items in zip(rows, ids):
            assert not set(items) & set(train[row].indices)
            assert len(set(items)) == K
        assert (np.diff(scores, axis=1) <= 0).all()  # best first

    def test_recommend_can_include_seen_items(self, fitted: Recommender) -> None:
        train, _, _ = planted()
        ids, _ = fitted.recommend(np.arange(N_USERS), train, k=K, exclude_seen=False)
        seen = [set(train[u].indices) & set(ids[u]) for u in range(N_USERS)]
        assert any(seen)

    def test_recommend_single_user_and_batching(self, fitted: Recommender) -> None:
        train, _, _ = planted()
        rows = np.arange(40)
        ids, scores = fitted.recommend(rows, train[rows], k=K)
        small_ids, small_scores = fitted.recommend(rows, train[rows], k=K, batch_size=7)
        np.testing.assert_array_equal(ids, small_ids)
        one_ids, one_scores = fitted.recommend(3, train[3], k=K)
        assert one_ids.shape == (K,)
        np.testing.assert_array_equal(one_ids, ids[3])

    def test_user_without_history(self, fitted: Recommender) -> None:
        train, _, _ = planted()
        empty = N_USERS - 1  # trained on, no interactions
        ids, _ = fitted.recommend([empty], train[[empty]], k=K)
        assert ids.shape == (1, K) and (ids >= 0).all()
        unseen = sp.csr_matrix((1, N_ITEMS), dtype=np.float32)  # never trained on
        ids, _ = fitted.recommend([N_USERS + 5], unseen, k=K)
        assert ids.shape == (1, K) and (ids >= 0).all()

    def test_k_beyond_unseen_items_pads_with_minus_one(self, fitted: Recommender) -> None:
        history = sp.csr_matrix(np.ones((1, N_ITEMS), dtype=np.float32))
        history[0, :3] = 0
        history.eliminate_zeros()
        ids, scores = fitted.recommend([0], history, k=5)
        assert set(ids[0, :3]) == {0, 1, 2}
        assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()

    def test_bad_user_items_rejected(self, fitted: Recommender) -> None:
        train, _, _ = planted()
        with pytest.raises(ValueError, match="one history row per user"):
            fitted.recommend(np.arange(3), train, k=K)

    def test_deterministic_with_seed(self) -> None:
        train, _, _ = planted()
        rows = np.arange(30)
        first = self.make(seed=7).fit(train).score(rows, train[rows])
        second = self.make(seed=7).fit(train).score(rows, train[rows])
        np.testing.assert_array_equal(first, second)

    def test_beats_random_on_held_out_items(self, fitted: Recommender) -> None:
        train, test, _ = planted()
        result = evaluate(fitted, train, test, k=K)
        assert result["users"] > 300
        chance = random_recall(train, test, K)
        assert result[f"recall@{K}"] > self.min_lift * chance, (result, chance)

    def test_similar_items(self, fitted: Recommender) -> None:
        if not self.has_similar_items:
            with pytest.raises(NotImplementedError):
                fitted.similar_items(0, 5)
            return
        ids, scores = fitted.similar_items(0, 5)
        assert 0 < len(ids) <= 5 and 0 not in ids
        assert (np.diff(scores) <= 0).all()
        # item 0 is cluster 0's most liked item: its neighbours are mostly cluster 0's
        assert np.mean(ids // PER_CLUSTER == 0) >= 0.6


class TestPopularity(RecommenderConformance):
    min_lift = 1.5
    has_similar_items = False

    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return Popularity()


class TestItemKNN(RecommenderConformance):
    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return ItemKNN(neighbours=20, shrinkage=5.0, block=16)

    def test_shrinkage_and_pruning(self) -> None:
        train, _, _ = planted()
        plain = ItemKNN(neighbours=N_ITEMS).fit(train).similarity.toarray()
        binary = (train > 0).astype(float).toarray()
        co = binary.T @ binary
        norms = np.sqrt(np.diag(co))
        expected = co / np.outer(norms, norms)
        np.fill_diagonal(expected, 0)
        np.testing.assert_allclose(plain, expected, rtol=1e-5, atol=1e-6)
        shrunk = ItemKNN(neighbours=5, shrinkage=10.0).fit(train).similarity
        assert np.diff(shrunk.indptr).max() <= 5
        i, j = shrunk[0].indices[0], 0
        assert shrunk[0, i] == pytest.approx(co[j, i] / (norms[j] * norms[i] + 10.0), rel=1e-5)
        # every row keeps exactly its 5 largest shrunk similarities (ties may swap items)
        full = co / (np.outer(norms, norms) + 10.0)
        np.fill_diagonal(full, 0)
        for row in range(N_ITEMS):
            best = np.sort(full[row])[::-1][:5]
            np.testing.assert_allclose(np.sort(shrunk[row].data)[::-1], best[best > 0],
                                       rtol=1e-5)


class TestBPRMF(RecommenderConformance):
    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return BPRMF(factors=16, learning_rate=0.05, iterations=60, seed=seed)


class TestALS(RecommenderConformance):
    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return ALSRecommender(factors=8, regularization=0.1, alpha=10.0, iterations=10,
                              seed=seed)

    def test_confidence_formulas(self) -> None:
        weights = sp.csr_matrix(np.array([[0.0, 1.0, 3.0]], dtype=np.float32))
        linear = ALSRecommender(alpha=2.0).confidence_matrix(weights)
        np.testing.assert_allclose(linear.toarray(), [[0.0, 3.0, 7.0]])
        log = ALSRecommender(alpha=2.0, confidence="log", eps=0.5).confidence_matrix(weights)
        np.testing.assert_allclose(log.toarray(), [[0.0, 1 + 2 * np.log(3), 1 + 2 * np.log(7)]],
                                   rtol=1e-6)
        with pytest.raises(ValueError):
            ALSRecommender(confidence="sqrt")  # type: ignore[arg-type]

    def test_fold_in_moves_user_towards_new_items(self) -> None:
        train, _, cluster = planted()
        model = self.make().fit(train)
        user = int(np.flatnonzero(cluster == 0)[0])
        before, _ = model.recommend(user, train[user], k=K)
        assert np.mean(before // PER_CLUSTER == 3) < 0.5
        users_before = model.user_factors.copy()
        items_before = model.item_factors.copy()

        row = train[user].toarray()
        row[0, 3 * PER_CLUSTER: 3 * PER_CLUSTER + 8] = 1.0  # 8 new events in cluster 3
        for _ in range(2):  # two more visits to the same items: more confidence
            row[0, 3 * PER_CLUSTER: 3 * PER_CLUSTER + 8] += 1.0
        updated = sp.csr_matrix(row)
        vector = model.fold_in(user, updated)

        after, _ = model.recommend(user, updated, k=K)
        assert np.mean(after // PER_CLUSTER == 3) >= 0.5  # the new items' neighbours
        assert not set(after) & set(updated.indices)
        np.testing.assert_array_equal(model.user_factors[user], vector)
        changed = np.flatnonzero((model.user_factors != users_before).any(axis=1))
        assert changed.tolist() == [user]
        np.testing.assert_array_equal(model.item_factors, items_before)

    def test_recalculate_user_stores_nothing_and_new_users_fold_in(self) -> None:
        train, _, _ = planted()
        model = self.make().fit(train)
        snapshot = model.user_factors.copy()
        again = model.recalculate_user(np.arange(5), train[:5])
        np.testing.assert_array_equal(model.user_factors, snapshot)
        cos = np.sum(again * snapshot[:5], axis=1) / (
            np.linalg.norm(again, axis=1) * np.linalg.norm(snapshot[:5], axis=1))
        assert (cos > 0.9).all()  # exact solve vs the fitted CG solution: close
        model.fold_in(N_USERS, train[0])
        assert model.n_users == N_USERS + 1
        np.testing.assert_allclose(model.user_factors[N_USERS], again[0], rtol=1e-5)

    def test_save_load_round_trip(self, tmp_path) -> None:
        train, _, _ = planted()
        model = ALSRecommender(factors=8, alpha=3.0, confidence="log", eps=0.5,
                               iterations=5).fit(train)
        path = model.save(tmp_path / "als")
        assert path.name == "als.npz"
        loaded = ALSRecommender.load(path)
        assert (loaded.factors, loaded.alpha, loaded.confidence, loaded.eps) == (
            8, 3.0, "log", 0.5)
        rows = np.arange(20)
        np.testing.assert_array_equal(loaded.score(rows, train[rows]),
                                      model.score(rows, train[rows]))
        np.testing.assert_allclose(loaded.recalculate_user(rows, train[rows]),
                                   model.recalculate_user(rows, train[rows]), rtol=1e-5)
