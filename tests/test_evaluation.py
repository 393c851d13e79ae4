"""Metrics on hand-computed cases, the evaluation loop, the splits and the Gowalla data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from kg.embedded import EmbeddedStore
from kg.export import export_graph
from kg.importers.gowalla import build as build_gowalla
from kg.importers.gowalla import default_dir as gowalla_dir
from kg.schema import INTERACTED, DataError
from recommender.base import Recommender
from recommender.evaluation import (
    PROTOCOLS,
    evaluate,
    global_time_split,
    load_lightgcn_split,
    protocol_split,
    random_split_per_user,
    ranking_metrics,
    split_by_time,
    temporal_split_per_user,
    time_cut,
    to_csr,
)


def truth(rows: list[list[int]], n_items: int = 10) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), dtype=np.float32)
    for r, items in enumerate(rows):
        dense[r, items] = 1
    return sp.csr_matrix(dense)


def dcg(positions: list[int]) -> float:
    return sum(1 / np.log2(p + 1) for p in positions)


# ---- metrics --------------------------------------------------------------------------------
def test_perfect_ranking_scores_one() -> None:
    m = ranking_metrics(np.array([[3, 1, 7]]), truth([[1, 3, 7]]), k=3)
    for name in ("recall", "ndcg", "precision", "hit_rate", "mrr"):
        assert m[f"{name}@3"] == pytest.approx(1.0)
    assert m["coverage@3"] == pytest.approx(3 / 10)


def test_known_ndcg_value() -> None:
    # test {a=1, b=2}; ranked [1, 9, 2]: hits at ranks 1 and 3
    m = ranking_metrics(np.array([[1, 9, 2]]), truth([[1, 2]]), k=3)
    expected = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@3"] == pytest.approx(expected) == pytest.approx(0.919720, abs=1e-6)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["mrr@3"] == pytest.approx(1.0)


def test_recall_divides_by_test_size_not_min_of_test_and_k() -> None:
    # 5 test items, K = 2, both shown items are hits
    m = ranking_metrics(np.array([[0, 1]]), truth([[0, 1, 2, 3, 4]]), k=2)
    assert m["recall@2"] == pytest.approx(2 / 5)  # the published protocol, not 2 / min(5, 2)
    assert m["ndcg@2"] == pytest.approx(1.0)  # ideal DCG over min(|test|, K) = 2 items
    assert m["precision@2"] == pytest.approx(1.0)
    # fewer test items than K: precision still divides by K, NDCG's ideal has 1 item
    m = ranking_metrics(np.array([[5, 0, 6]]), truth([[0]]), k=3)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx(dcg([2]) / dcg([1]))
    assert m["mrr@3"] == pytest.approx(1 / 2)


def test_averages_over_users_and_cut_at_k() -> None:
    rec = np.array([[0, 1, 2, 3], [9, 8, 7, 4], [5, 6, -1, -1]])
    rel = truth([[2, 3], [4], [7]])
    m = ranking_metrics(rec, rel, k=3)
    assert m["recall@3"] == pytest.approx((1 / 2 + 0 + 0) / 3)  # item 4 at rank 4 is cut
    assert m["hit_rate@3"] == pytest.approx(1 / 3)
    assert m["mrr@3"] == pytest.approx((1 / 3) / 3)
    assert m["ndcg@3"] == pytest.approx(dcg([3]) / dcg([1, 2]) / 3)
    assert m["coverage@3"] == pytest.approx(len({0, 1, 2, 9, 8, 7, 5, 6}) / 10)
    m4 = ranking_metrics(rec, rel, k=4)
    assert m4["recall@4"] == pytest.approx((1 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="at least one test item"):
        ranking_metrics(rec, truth([[1], [], [2]]), k=3)


class FixedScores(Recommender):
    """Scores given up front: the evaluation loop must rank, mask and cut them itself."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores.astype(np.float32)

    def fit(self, user_items: sp.csr_matrix) -> FixedScores:
        self._fitted_on(user_items)
        return self

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return self.scores[user_rows].copy()


def test_evaluate_excludes_training_items_and_skips_users_without_test() -> None:
    scores = np.tile(np.arange(10, 0, -1), (3, 1))  # everyone: item 0 best, then 1, ...
    train = truth([[0, 1], [0], [5]])
    test = truth([[2, 1], [3], []])  # user 0's item 1 is also a training item
    model = FixedScores(scores).fit(train)
    result = evaluate(model, train, test, k=[1, 2])
    assert result["users"] == 2 and result["test_dropped_seen"] == 1
    # user 0: seen {0, 1} masked -> [2, 3]; truth {2}: hit at 1.  user 1: [1, 2]; truth {3}
    assert result["recall@1"] == pytest.approx(0.5)
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["mrr@2"] == pytest.approx(0.5)
    assert result["coverage@2"] == pytest.approx(3 / 10)
    kept = evaluate(model, train, test, k=2, exclude_seen=False)
    assert kept["test_dropped_seen"] == 0  # item 1 counts; user 0's list is [0, 1]
    assert kept["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    only = evaluate(model, train, test, k=2, users=np.array([1, 2]))
    assert only["users"] == 1


# ---- splits ---------------------------------------------------------------------------------
def test_temporal_split_per_user() -> None:
    frame = pd.DataFrame({
        "user": ["a"] * 10 + ["b"] * 3 + ["c"],
        "item": [f"i{n}" for n in range(10)] + ["x", "z", "y"] + ["w"],
        "ts": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0] + [1, 5, 5] + [3],
    }).sample(frac=1, random_state=3)  # input order must not matter
    train, test = temporal_split_per_user(frame, ratio=0.8)
    assert len(train) + len(test) == len(frame)
    assert sorted(test.loc[test["user"] == "a", "item"]) == ["i0", "i1"]  # 2 latest of 10
    # b: 3 rows -> floor(0.6) = 0, raised to one; the tie at ts=5 goes by item: z is later
    assert test.loc[test["user"] == "b", "item"].tolist() == ["z"]
    assert "c" not in set(test["user"])  # a single interaction stays in training
    for user, rows in train.groupby("user"):
        later = test.loc[test["user"] == user, "ts"]
        assert later.empty or rows["ts"].max() <= later.min()
    again = temporal_split_per_user(frame.sample(frac=1, random_state=9), ratio=0.8)
    assert sorted(again[1].index) == sorted(test.index)
    n = pd.DataFrame({"user": 1, "item": range(20), "ts": range(20)})
    assert len(temporal_split_per_user(n, 0.8)[1]) == 4  # floor(20 * 0.2), no float slip
    with pytest.raises(ValueError):
        temporal_split_per_user(frame, ratio=1.0)


def test_split_by_time_and_to_csr() -> None:
    frame = pd.DataFrame({"user": [0, 0, 1, 2], "item": [1, 2, 1, 0], "ts": [1, 5, 9, 10]})
    train, test = split_by_time(frame, test_from_ts=9)
    assert train["ts"].tolist() == [1, 5] and test["ts"].tolist() == [9, 10]
    matrix = to_csr(pd.concat([frame, frame.iloc[:1]]), (3, 3))
    assert matrix[0, 1] == 2 and matrix.nnz == 4
    weighted = to_csr(frame.assign(w=[0.5, 1, 2, 3]), (3, 3), weight="w")
    assert weighted[2, 0] == 3


def shop_log(seed: int = 0, n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": rng.integers(0, 40, n), "item": rng.integers(0, 90, n),
                         "ts": rng.integers(0, 10_000, n)})


def test_global_time_split_asks_returning_users_about_the_future() -> None:
    frame = shop_log()
    frame.loc[len(frame)] = {"user": 99, "item": 1, "ts": 9_999}  # a user first seen late
    train, test = global_time_split(frame, 0.8)
    cut = time_cut(frame, 0.8)
    assert train["ts"].max() < cut <= test["ts"].min()
    assert set(test["user"]) <= set(train["user"]) and 99 not in set(test["user"])
    assert abs(len(train) / len(frame) - 0.8) < 0.02
    # an explicit timestamp cuts there
    train_at, test_at = global_time_split(frame, 5_000)
    assert train_at["ts"].max() < 5_000 <= test_at["ts"].min()
    with pytest.raises(ValueError, match="empty"):
        global_time_split(frame, 20_000)


def test_random_split_keeps_per_user_counts_and_is_seeded() -> None:
    frame = shop_log()
    train, test = random_split_per_user(frame, 0.8, seed=1)
    _, by_time = temporal_split_per_user(frame, 0.8)
    assert test.groupby("user").size().equals(by_time.groupby("user").size())
    assert sorted(random_split_per_user(frame, 0.8, seed=1)[1].index) == sorted(test.index)
    assert sorted(random_split_per_user(frame, 0.8, seed=2)[1].index) != sorted(test.index)
    assert not (test["ts"].groupby(test["user"]).min()
                >= train["ts"].groupby(train["user"]).max()).all()  # not a time split


def test_protocol_split_dispatches_and_refuses_unknown() -> None:
    frame = shop_log()
    assert set(PROTOCOLS) == {"per-user", "global-time", "random"}
    for name in PROTOCOLS:
        train, test = protocol_split(frame, name)
        assert not set(train.index) & set(test.index)
    with pytest.raises(ValueError, match="unknown protocol 'leave-one-out'"):
        protocol_split(frame, "leave-one-out")


# ---- Gowalla --------------------------------------------------------------------------------
GOWALLA = gowalla_dir()
HAVE_GOWALLA = all((GOWALLA / f).is_file() for f in ("train.txt", "test.txt"))
gowalla_data = pytest.mark.skipif(not HAVE_GOWALLA,
                                  reason=f"shared data set missing: {GOWALLA}")


@gowalla_data
def test_gowalla_loader_counts() -> None:
    train, test = load_lightgcn_split()
    assert train.shape == test.shape == (29_858, 40_981)
    assert (train.nnz, test.nnz) == (810_128, 217_242)
    assert train.multiply(test).nnz == 0
    assert (np.diff(test.indptr) > 0).sum() == 29_858


@gowalla_data
def test_gowalla_importer_keeps_the_split() -> None:
    result = build_gowalla(None)
    assert result.stats == {"users": 29_858, "items": 40_981, "train_rows": 810_128,
                            "test_rows": 217_242}
    rels = result.batch.rel_frame(INTERACTED)
    assert rels["split"].value_counts().to_dict() == {"train": 810_128, "test": 217_242}
    assert set(rels["kind"]) == {"view"} and set(rels["weight"]) == {1.0}
    users = result.batch.node_frame("User")
    assert len(users) == 29_858 and users.set_index("id").loc["0", "org_id"] == "343"


def write(directory: Path, train: str, test: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.txt").write_text(train)
    (directory / "test.txt").write_text(test)
    return directory


def test_gowalla_small_files(tmp_path: Path) -> None:
    d = write(tmp_path / "ok", "0 1 2 2\n1 0\n\n2\n", "0 3\n1 2\n")
    result = build_gowalla(d)
    assert result.stats == {"users": 3, "items": 4, "train_rows": 3, "test_rows": 2}
    assert any("repeated" in note for note in result.notes)
    assert any("without items" in note for note in result.notes)
    assert "org_id" not in result.batch.node_frame("User")
    train, test = load_lightgcn_split(d)
    assert train.shape == (3, 4) and train.nnz == 3 and test[0, 3] == 1
    # through a store, the export keeps the split apart
    store = EmbeddedStore(tmp_path / "g")
    store.load(result.batch)
    snap = export_graph(store)
    assert snap.interaction_matrix(split="train").nnz == 3
    assert snap.interaction_matrix(split="test").nnz == 2
    assert snap.interaction_matrix().nnz == 5


@pytest.mark.parametrize(("train", "test", "file", "line", "field"), [
    ("0 1 x\n", "0 2\n", "train.txt", 1, "item_id"),
    ("0 1\n-1 2\n", "0 2\n", "train.txt", 2, "user_id"),
    ("0 1\n1 2\n0 3\n", "0 2\n", "train.txt", 3, "user_id"),
    ("0 1\n", "0 2\n1 1.5\n", "test.txt", 2, "item_id"),
    ("0 1\n1 2\n", "0 3\n1 4 2\n", "test.txt", 2, "item_id"),
])
def test_gowalla_bad_lines(tmp_path: Path, train: str, test: str, file: str, line: int,
                           field: str) -> None:
    d = write(tmp_path / "bad", train, test)
    with pytest.raises(DataError) as err:
        build_gowalla(d)
    assert Path(err.value.file).name == file
    assert (err.value.line, err.value.field) == (line, field)
