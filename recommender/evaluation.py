"""Offline evaluation: ranking metrics, the evaluation loop and train/test splits.

Protocol (the one behind the published numbers in ../shared/data/README.md): rank every
item, exclude the user's training items, score the top K against the user's test items,
average over test users. With `rel_r` = 1 when the item at rank r is a test item:

- Recall@K    = hits@K / |test|. The LightGCN/BARS protocol (and RecBole) divide by |test|,
  not min(|test|, K), so a user with more than K test items cannot reach 1.0; published
  Recall@20 figures are only comparable under this definition.
- Precision@K = hits@K / K.
- NDCG@K      = DCG@K / IDCG@K, DCG = sum_{r<=K} rel_r / log2(r + 1), and the ideal DCG puts
  min(|test|, K) hits at the top (so a perfect top-K scores 1.0 even when |test| > K).
- HitRate@K   = 1 if any test item is in the top K.
- MRR@K       = 1 / rank of the first test item within the top K, 0 if none is there. Cut at
  K like the others, so it is computed from the same list (a full-ranking MRR would need
  every user's complete ranking and says little about what a user is shown).
- Coverage@K  = distinct items recommended to the evaluated users / n_items.

Test items the user also has in training cannot be recommended once seen items are excluded;
`evaluate` drops them from the ground truth (and counts them) instead of charging every model
for them. The LightGCN split has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.base import Recommender, binarised

METRICS = ("recall", "ndcg", "precision", "hit_rate", "mrr", "coverage")


# ---- metrics --------------------------------------------------------------------------------
def ranking_metrics(
    recommended: np.ndarray, relevant: sp.csr_matrix, k: int, n_items: int | None = None
) -> dict[str, float]:
    """Mean metrics@k of top lists against ground truth, one row each.

    `recommended` is (users, >= k) item indices, best first, -1 for an empty slot;
    `relevant` is (users, n_items), its stored entries are the test items. Users without a
    test item must be left out by the caller (their recall is undefined).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    recommended = np.asarray(recommended, dtype=np.int64)
    if recommended.ndim != 2 or recommended.shape[0] != relevant.shape[0]:
        raise ValueError("recommended must have one row per row of relevant")
    n_items = relevant.shape[1] if n_items is None else n_items
    truth = binarised(relevant)
    truth.sort_indices()
    n_rel = np.diff(truth.indptr)
    if (n_rel == 0).any():
        raise ValueError("every evaluated user needs at least one test item")
    top = recommended[:, :k]
    # membership of (user, item) in the test set via sorted global keys: no python loop
    keys = np.repeat(np.arange(truth.shape[0], dtype=np.int64), n_rel) * n_items + truth.indices
    asked = np.arange(len(top), dtype=np.int64)[:, None] * n_items + top
    pos = np.minimum(np.searchsorted(keys, asked), len(keys) - 1)
    hits = (keys[pos] == asked) & (top >= 0)

    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    n_hits = hits.sum(axis=1)
    dcg = hits @ discounts[: top.shape[1]]
    idcg = np.cumsum(discounts)[np.minimum(n_rel, k) - 1]
    any_hit = n_hits > 0
    first = hits.argmax(axis=1)
    shown = np.unique(top[top >= 0])
    return {
        f"recall@{k}": float(np.mean(n_hits / n_rel)),
        f"ndcg@{k}": float(np.mean(dcg / idcg)),
        f"precision@{k}": float(np.mean(n_hits / k)),
        f"hit_rate@{k}": float(np.mean(any_hit)),
        f"mrr@{k}": float(np.mean(np.where(any_hit, 1.0 / (first + 1), 0.0))),
        f"coverage@{k}": float(len(shown) / n_items),
    }


def evaluate(
    model: Recommender, train: sp.csr_matrix, test: sp.csr_matrix,
    k: int | Sequence[int] = 20, users: np.ndarray | None = None, exclude_seen: bool = True,
) -> dict[str, float]:
    """Metrics@k of a fitted `model` on `test`, ranking all items, training items excluded.

    `train` is the matrix the model was fitted on (its rows are the users' histories),
    `test` the held-out interactions, same shape. `users` (default: every user with a test
    item) are the rows scored; rows without a test item are skipped. Returns the metrics for
    each k plus `users` (how many were averaged) and `test_dropped_seen`.
    """
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    if train.shape != test.shape:
        raise ValueError(f"train {train.shape} and test {test.shape} differ in shape")
    ks = [k] if isinstance(k, int) else sorted({int(x) for x in k})
    truth = binarised(test)
    dropped = 0
    if exclude_seen:
        seen = truth.multiply(binarised(train)).tocsr()
        dropped = int(seen.nnz)
        if dropped:
            truth = (truth - seen).tocsr()
            truth.eliminate_zeros()
    has_test = np.diff(truth.indptr) > 0
    rows = np.flatnonzero(has_test) if users is None else np.asarray(users, dtype=np.int64)
    rows = rows[has_test[rows]]
    out: dict[str, float] = {}
    if len(rows):
        recommended, _ = model.recommend(rows, train[rows], k=max(ks), exclude_seen=exclude_seen)
        for cut in ks:
            out.update(ranking_metrics(recommended, truth[rows], cut, train.shape[1]))
    out["users"] = int(len(rows))
    out["test_dropped_seen"] = dropped
    return out


# ---- splits ---------------------------------------------------------------------------------
def temporal_split_per_user(
    frame: pd.DataFrame, ratio: float = 0.8, user: str = "user", item: str = "item",
    ts: str = "ts",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's earliest `ratio` of interactions to train, the latest rest to test.

    Per user with n interactions, test gets floor(n * (1 - ratio)) of them, at least one when
    n >= 2 (RecBole's rounding for ratio splits); a user with a single interaction stays in
    train. Order is by time, ties by item, then by row position, so the split depends on the
    data and not on how a store happened to order it. Returns (train, test) with the
    original index, each sorted by user then time.
    """
    if not 0 < ratio < 1:
        raise ValueError("ratio must be strictly between 0 and 1")
    missing = [c for c in (user, item, ts) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}")
    if frame[ts].isna().any():
        raise ValueError(f"column {ts!r} has missing timestamps")
    ordered = frame.assign(_pos=np.arange(len(frame))).sort_values(
        [user, ts, item, "_pos"], kind="stable")
    size = ordered.groupby(user, sort=False)[user].transform("size").to_numpy()
    rank = ordered.groupby(user, sort=False).cumcount().to_numpy()
    n_test = np.floor(size * (1.0 - ratio) + 1e-9).astype(np.int64)
    n_test = np.where((n_test == 0) & (size >= 2), 1, n_test)
    is_test = rank >= size - n_test
    ordered = ordered.drop(columns="_pos")
    return ordered[~is_test], ordered[is_test]


def split_by_time(
    frame: pd.DataFrame, test_from_ts: float | int | pd.Timestamp, ts: str = "ts"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A global cut: interactions before `test_from_ts` train, the rest test.

    Mimics deployment (predict the coming weeks from the past), e.g. the last weeks of
    Complete Journey. Test users with no training rows stay in `test`: they are cold-start
    users, which `evaluate` scores through each model's fallback.
    """
    if ts not in frame.columns:
        raise ValueError(f"frame lacks column {ts!r}")
    if frame[ts].isna().any():
        raise ValueError(f"column {ts!r} has missing timestamps")
    is_test = (frame[ts] >= test_from_ts).to_numpy(dtype=bool)
    return frame[~is_test], frame[is_test]


PROTOCOLS = ("per-user", "global-time", "random")


def random_split_per_user(
    frame: pd.DataFrame, ratio: float = 0.8, seed: int = 0, user: str = "user",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random (1 - ratio) of each user's interactions to test, the rest to train.

    Same per-user counts as `temporal_split_per_user` (at least one test row for a user with
    two or more); the order inside a user is a seeded shuffle instead of time. The protocol
    most papers use, and the one that flatters models most: the future leaks into training.
    """
    shuffled = frame.assign(_order=np.random.default_rng(seed).permutation(len(frame)))
    if not frame.index.is_unique:
        raise ValueError("frame's index must be unique (reset_index first)")
    train, test = temporal_split_per_user(shuffled, ratio, user=user, item="_order",
                                          ts="_order")
    return frame.loc[train.index.sort_values()], frame.loc[test.index.sort_values()]


def time_cut(frame: pd.DataFrame, cut: float | None = None, ts: str = "ts") -> int:
    """The timestamp a global split cuts at: `cut` in (0, 1) is a quantile of the rows'
    timestamps (0.8: the latest 20 % of rows are after it), a larger number is a timestamp."""
    cut = 0.8 if cut is None else float(cut)
    if cut <= 0:
        raise ValueError(f"cut must be a quantile in (0, 1) or a timestamp, not {cut}")
    if cut < 1:
        return int(np.quantile(frame[ts].to_numpy(dtype=np.int64), cut, method="higher"))
    return int(cut)


def global_time_split(
    frame: pd.DataFrame, cut: float | None = None, user: str = "user", ts: str = "ts",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Everything before the cut trains; what users with history before it do after it is
    test (how a deployed model is used: trained up to a date, asked about what follows).

    Rows after the cut from users with no row before it are dropped (a cold-start question,
    not the one this protocol asks). `cut` as in `time_cut`.
    """
    at = time_cut(frame, cut, ts)
    train, test = split_by_time(frame, at, ts)
    if train.empty or test.empty:
        raise ValueError(f"a cut at {at} leaves an empty train or test part")
    return train, test[test[user].isin(train[user].unique())]


def protocol_split(
    frame: pd.DataFrame, protocol: str, cut: float | None = None, seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) of `frame` (user, item, ts rows) under one of `PROTOCOLS`.

    `cut` is the share of rows (or a timestamp, `global-time` only) that trains: 0.8 by
    default for every protocol. Tuning applies the same protocol inside the training rows,
    so what the blend is tuned on mirrors what it is tested (and, for global-time, served) on.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if protocol == "global-time":
        return global_time_split(frame, cut)
    ratio = 0.8 if cut is None else float(cut)
    if protocol == "per-user":
        return temporal_split_per_user(frame, ratio)
    return random_split_per_user(frame, ratio, seed)


def to_csr(
    frame: pd.DataFrame, shape: tuple[int, int], user: str = "user", item: str = "item",
    weight: str | None = None,
) -> sp.csr_matrix:
    """A users x items CSR from integer row/column columns; repeated pairs are summed.

    `weight=None` gives 1 per row (implicit feedback)."""
    values = np.ones(len(frame)) if weight is None else frame[weight].to_numpy(dtype=float)
    matrix = sp.csr_matrix(
        (values.astype(np.float32),
         (frame[user].to_numpy(dtype=np.int64), frame[item].to_numpy(dtype=np.int64))),
        shape=shape,
    )
    matrix.sum_duplicates()
    return matrix


def load_lightgcn_split(data_dir: str | Path | None = None
                        ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """LightGCN's Gowalla split (`train.txt`, `test.txt`) as binary train and test CSRs.

    Shape is (max user + 1, max item + 1) over both files, the numbering LightGCN and the
    published numbers use (29,858 x 40,981 for Gowalla). Parsing is the gowalla importer's,
    with its DataErrors (file, line, field).
    """
    from kg.importers.gowalla import default_dir, read_user_item_lists

    directory = Path(data_dir) if data_dir is not None else default_dir()
    parts = [read_user_item_lists(directory / f"{name}.txt") for name in ("train", "test")]
    n_users = 1 + max((int(p.users.max()) for p in parts if len(p.users)), default=-1)
    n_items = 1 + max((int(p.pairs["item"].max()) for p in parts if len(p.pairs)), default=-1)
    train, test = (to_csr(p.pairs, (n_users, n_items)) for p in parts)
    return train, test
