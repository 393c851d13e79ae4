"""Time-aware sources: what is trending now, and what shoppers take next.

Both read the interactions' timestamps, which the other sources only see through the
recency weights of the history rows:

- `RecentPopularity` ("trending"): every interaction counts 0.5 ** (age / half-life), age
  measured back from the latest training timestamp, so what sells now outranks what sold a
  year ago. The half-life is learned on a validation matrix (the NDCG@k of a grid of
  half-lives, infinity = plain popularity), because the right memory is a property of the
  shop: a fashion catalogue turns over in weeks, a film catalogue barely at all. Measured in
  issue 12: on ml100k-kg under a global time cut, the last 14 days' best sellers beat the
  tuned hybrid and ALS by a wide margin.
- `Transitions` ("often bought after X"): item-to-item transition counts over each user's
  interactions in time order, scored from the user's latest items. It is the short-term
  intent that a whole-history model (ALS, co-purchase) averages away.

Timestamps are integer seconds (the `ts` column of `training.interaction_frame`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.base import Reason, Recommender, binarised, spread_rows, top_k
from recommender.baselines import _npz
from recommender.tuning import best_on_grid

LOG = logging.getLogger(__name__)

DAY = 86_400  # seconds
DEFAULT_HALF_LIVES_DAYS: tuple[float, ...] = (1, 3, 7, 14, 30, 90, 365, math.inf)
FLOOR = 1e-20  # scores below it are zero: their tie-break term would underflow float32
NO_TIMESTAMPS = "no timestamps: trending is plain popularity (distinct users per item)"


def _with_prior(scores: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """`scores` (users x items, >= 0) with ties among zero-score items broken by `prior`
    (in [0, 1]): each row gets prior x 1e-6 x its smallest positive score (1 for an all-zero
    row; scores below `FLOOR` count as zero), so no item with a score drops below one
    without, and an item no signal reaches is ranked by popularity instead of by index."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(scores < FLOOR, 0.0, scores)  # what float32 cannot tell from 0
    positive = np.where(scores > 0, scores, np.inf).min(axis=1, keepdims=True)
    positive[~np.isfinite(positive)] = 1e6
    return (scores + 1e-6 * positive * prior[None, :]).astype(np.float32)


def _frame_columns(interactions: pd.DataFrame, n_items: int, columns: Sequence[str]
                   ) -> dict[str, np.ndarray]:
    """The named integer columns of `interactions`, items checked against the catalogue."""
    missing = [c for c in columns if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions lack column(s) {missing}")
    out = {c: interactions[c].to_numpy(dtype=np.int64) for c in columns}
    items = out["item"]
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"interactions name items outside 0..{n_items - 1}")
    return out


# ---- trending -------------------------------------------------------------------------------
class RecentPopularity(Recommender):
    """Item score = sum over training interactions of 0.5 ** ((t_end - ts) / half-life).

    `t_end` is the latest training timestamp: "now" for the model (a model trained on data
    up to a date serves what was trending then, until it is retrained). With `valid` passed
    to `fit`, the half-life is the one of `grid_days` with the best NDCG@`k` on the
    validation users (their training items excluded); a shorter half-life replaces a longer
    one only when it gains more than `min_gain` (relative), so noise in a small validation
    does not make the model forget. `best_half_life_days` holds the choice, so a refit on all
    rows reuses it (`RecentPopularity(half_life_days=model.best_half_life_days)`), as the GNN
    reuses `best_epoch`. Without `valid`, `half_life_days` is used. Without interactions, or
    when every timestamp is the same, the score is plain popularity and `note` says so.

    The score is the same for every user (seen items are excluded by `recommend`); items
    that no interaction within reach of the decay touched are ordered by all-time
    popularity rather than by index.
    """

    name = "trending"

    def __init__(self, half_life_days: float = 14.0,
                 grid_days: Sequence[float] = DEFAULT_HALF_LIVES_DAYS, k: int = 20,
                 max_users: int = 5000, min_gain: float = 0.01, seed: int = 0) -> None:
        if not half_life_days > 0:
            raise ValueError("half_life_days must be > 0 (math.inf = plain popularity)")
        if not grid_days or any(not h > 0 for h in grid_days):
            raise ValueError("grid_days must be a non-empty list of half-lives > 0")
        if k < 1 or max_users < 1 or min_gain < 0:
            raise ValueError("k and max_users must be >= 1, min_gain >= 0")
        self.half_life_days = float(half_life_days)
        self.grid_days = tuple(sorted({float(h) for h in grid_days}, reverse=True))
        self.k, self.max_users, self.min_gain, self.seed = int(k), int(max_users), min_gain, seed
        self.scores: np.ndarray | None = None  # one score per item
        self.best_half_life_days: float | None = None
        self.t_end: int | None = None  # the model's "now" (latest training ts)
        self.validation: dict[float, float] = {}  # half-life in days -> valid NDCG@k
        self.note = ""
        self._prior: np.ndarray | None = None  # all-time popularity in [0, 1]: tie-breaks

    def fit(self, user_items: sp.csr_matrix, interactions: pd.DataFrame | None = None,
            valid: sp.csr_matrix | None = None) -> Self:
        """`interactions`: the training rows (`item`, `ts` columns; one decayed count each);
        `valid`: a users x items matrix of later interactions to learn the half-life on."""
        matrix = self._fitted_on(user_items)
        counts = np.asarray(binarised(matrix).sum(axis=0), dtype=np.float64).ravel()
        self._prior = counts / max(counts.max(), 1.0)
        self.validation, self.note, self.t_end = {}, "", None
        items = ages = None
        if interactions is not None and len(interactions):
            columns = _frame_columns(interactions, self.n_items, ("item", "ts"))
            if columns["ts"].max() > columns["ts"].min():
                items, self.t_end = columns["item"], int(columns["ts"].max())
                ages = (self.t_end - columns["ts"]).astype(np.float64)
        if ages is None:
            self.note = NO_TIMESTAMPS
            LOG.info("trending: %s", NO_TIMESTAMPS)
            self.best_half_life_days = math.inf
            self.scores = self._finish(counts)
            return self
        if valid is None:
            self.best_half_life_days = self.half_life_days
        else:
            self.best_half_life_days = self._learn(matrix, items, ages, valid)
        self.scores = self._finish(self._decayed(items, ages, self.best_half_life_days))
        return self

    def _decayed(self, items: np.ndarray, ages: np.ndarray, half_life_days: float
                 ) -> np.ndarray:
        if math.isinf(half_life_days):
            weights = np.ones(len(items))
        else:
            weights = np.power(0.5, ages / (half_life_days * DAY))
        return np.bincount(items, weights=weights, minlength=self.n_items)

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        """Scaled to a maximum of 1 (float32 keeps tiny decayed counts), ties by prior."""
        raw = raw / max(float(raw.max()), 1e-300)
        return _with_prior(raw[None, :], self._prior)[0]

    def _learn(self, matrix: sp.csr_matrix, items: np.ndarray, ages: np.ndarray,
               valid: sp.csr_matrix) -> float:
        """The grid's half-life with the best validation NDCG@k (longest first; a shorter
        one must beat the best so far by `min_gain`); `half_life_days` when `valid` has
        nothing to learn from."""
        from recommender.evaluation import ranking_metrics

        valid = sp.csr_matrix(valid)
        if valid.shape != matrix.shape:
            raise ValueError(f"valid has shape {valid.shape}, user_items {matrix.shape}")
        seen_all = binarised(matrix)
        truth = binarised(valid)
        truth = (truth - truth.multiply(seen_all)).tocsr()
        truth.eliminate_zeros()
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        if not len(users):  # nothing to learn from: keep the configured half-life
            self.note = (f"valid has no user with an item outside their training rows: "
                         f"half-life {self.half_life_days:g} days, not learned")
            LOG.info("trending: %s", self.note)
            return self.half_life_days
        if len(users) > self.max_users:
            rng = np.random.default_rng(self.seed)
            users = np.sort(rng.choice(users, self.max_users, replace=False))
        seen, truth = seen_all[users], truth[users]
        # one list for everyone: the top (k + longest history) items hold every user's top k
        depth = min(self.n_items, self.k + int(np.diff(seen.indptr).max()))

        def ndcg_of(half_life: float) -> float:
            order, _ = top_k(self._finish(self._decayed(items, ages, half_life))[None, :],
                             depth)
            masked = seen[:, order[0]].toarray() > 0
            pick = np.argsort(masked, axis=1, kind="stable")[:, : self.k]
            ranked = np.where(np.take_along_axis(masked, pick, axis=1), -1, order[0][pick])
            cut = ranked.shape[1]  # k, or the catalogue when it has fewer items
            return ranking_metrics(ranked, truth, cut, self.n_items)[f"ndcg@{cut}"]

        best, trials = best_on_grid(self.grid_days, ndcg_of, self.min_gain)
        self.validation = dict(trials)
        best_ndcg = self.validation[best]
        LOG.info("trending: half-life %s days (valid NDCG@%d %.4f)", best, self.k, best_ndcg)
        return best

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted()
        return np.repeat(self.scores[None, :], len(user_rows), axis=0)

    def describe(self) -> str:
        """The learned window as words, for explanations: "popular in the last 7 days"."""
        days = self.best_half_life_days
        if days is None or math.isinf(days):
            return "popular with shoppers"
        if days < 1:
            return f"popular in the last {max(1, round(days * 24))} hours"
        if days == 1:
            return "popular today"
        if days == 7:
            return "popular this week"
        return f"popular in the last {days:g} days"

    def save(self, path: str | Path) -> Path:
        """Scores, the learned half-life and parameters as an `.npz` (no pickle)."""
        self._check_fitted()
        path = _npz(path)
        grid = np.array(sorted(self.validation), dtype=np.float64)
        np.savez(path, scores=self.scores, prior=self._prior, n_users=self.n_users,
                 half_life_days=self.half_life_days, grid_days=np.array(self.grid_days),
                 k=self.k, max_users=self.max_users, min_gain=self.min_gain, seed=self.seed,
                 best_half_life_days=self.best_half_life_days,
                 t_end=-1 if self.t_end is None else self.t_end, note=np.str_(self.note),
                 validation_days=grid,
                 validation_ndcg=np.array([self.validation[h] for h in grid]))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RecentPopularity:
        with np.load(Path(path), allow_pickle=False) as data:
            model = cls(float(data["half_life_days"]), tuple(data["grid_days"].tolist()),
                        int(data["k"]), int(data["max_users"]), float(data["min_gain"]),
                        int(data["seed"]))
            model.scores = data["scores"].astype(np.float32)
            model._prior = data["prior"].astype(np.float64)
            model.n_users, model.n_items = int(data["n_users"]), len(model.scores)
            model.best_half_life_days = float(data["best_half_life_days"])
            model.t_end = None if int(data["t_end"]) < 0 else int(data["t_end"])
            model.note = str(data["note"])
            model.validation = dict(zip(data["validation_days"].tolist(),
                                        data["validation_ndcg"].tolist()))
        return model


# ---- what comes next ------------------------------------------------------------------------
class Transitions(Recommender):
    """"What comes next": T[i, j] counts how often j follows i in a user's history.

    Each user's interactions are ordered by `ts` (ties by item) and immediate repeats
    collapsed; for each interaction of item i, the next `window` distinct items j != i of
    the same user (looked for within the next 2 x `window` positions, and within
    `max_gap_days` when set) add `decay` ** (d - 1) to T[i, j], d = 1 for the very next one.
    Row i is divided by count(i) ** `beta` (count(i): i's occurrences; beta 1 gives a
    conditional frequency, lower keeps more weight on well-supported items) and pruned to
    its `neighbours` largest entries.

    A user's score = sum over history items i of w_i ** `focus` x T[i, :], w_i being the
    weights of the history row passed in: with `history.history_matrix` rows (latest item
    1, older ones halved every few items) the latest items dominate, so the same model
    serves a live or new user from the row the service builds. Items no transition reaches
    are ordered by popularity.

    Without `interactions` (e.g. the conformance suite's plain matrix), the order is read
    from the matrix's weights, which `history_matrix` makes grow with recency (ties, e.g. a
    binary matrix, by item index); `note` says so.
    """

    name = "transitions"

    def __init__(self, window: int = 3, decay: float = 0.5, beta: float = 1.0,
                 focus: float = 2.0, neighbours: int = 100, max_gap_days: float | None = None
                 ) -> None:
        if window < 1 or neighbours < 1:
            raise ValueError("window and neighbours must be >= 1")
        if not 0 < decay <= 1:
            raise ValueError("decay must be in (0, 1]")
        if beta < 0 or focus < 0:
            raise ValueError("beta and focus must be >= 0")
        if max_gap_days is not None and not max_gap_days > 0:
            raise ValueError("max_gap_days must be > 0 (or None: no limit)")
        self.window, self.decay, self.beta, self.focus = int(window), decay, beta, focus
        self.neighbours, self.max_gap_days = int(neighbours), max_gap_days
        self.transitions: sp.csr_matrix | None = None  # items x items, row i = what follows i
        self.note = ""
        self._prior: np.ndarray | None = None  # occurrences in [0, 1]: tie-breaks

    def fit(self, user_items: sp.csr_matrix, interactions: pd.DataFrame | None = None
            ) -> Self:
        """`interactions`: the training rows (`user`, `item`, `ts` columns) whose order in
        time defines the transitions."""
        matrix = self._fitted_on(user_items)
        users, items, stamps = self._sequence(matrix, interactions)
        # collapse immediate repeats (A A B -> A B): a re-purchase is not a transition
        keep = np.ones(len(items), dtype=bool)
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[keep], items[keep]
        stamps = None if stamps is None else stamps[keep]
        n = len(items)
        taken = np.zeros(n, dtype=np.int64)  # distinct successors accepted per position
        rows, cols, vals = [], [], []
        gap = None if self.max_gap_days is None else self.max_gap_days * DAY
        for d in range(1, min(2 * self.window, max(n - 1, 0)) + 1):
            src = np.arange(n - d)
            dst = src + d
            ok = (users[dst] == users[src]) & (items[dst] != items[src])
            ok &= taken[src] < self.window
            if gap is not None and stamps is not None:
                ok &= (stamps[dst] - stamps[src]) <= gap
            for e in range(1, d):  # distinct: not already met between src and dst
                ok &= items[dst] != items[src + e]
            rows.append(items[src[ok]])
            cols.append(items[dst[ok]])
            vals.append(np.power(self.decay, taken[src[ok]]).astype(np.float64))
            taken[src[ok]] += 1
        occurrences = np.bincount(items, minlength=self.n_items).astype(np.float64)
        self._prior = occurrences / max(occurrences.max(), 1.0)
        counts = sp.coo_matrix(
            (np.concatenate(vals) if vals else np.zeros(0),
             (np.concatenate(rows) if rows else np.zeros(0, np.int64),
              np.concatenate(cols) if cols else np.zeros(0, np.int64))),
            shape=(self.n_items, self.n_items)).tocsr()
        counts.sum_duplicates()
        scale = np.power(np.maximum(occurrences, 1.0), -self.beta)
        self.transitions = _prune(sp.diags(scale) @ counts, self.neighbours)
        return self

    def _sequence(self, matrix: sp.csr_matrix, interactions: pd.DataFrame | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(user, item, ts) sorted by user, then time, then item."""
        self.note = ""
        if interactions is not None and len(interactions):
            c = _frame_columns(interactions, self.n_items, ("user", "item", "ts"))
            if c["ts"].max() > c["ts"].min():
                order = np.lexsort((c["item"], c["ts"], c["user"]))
                return c["user"][order], c["item"][order], c["ts"][order]
        self.note = ("no timestamps: order read from the history weights (recency), ties by "
                     "item")
        LOG.info("transitions: %s", self.note)
        coo = matrix.tocoo()
        order = np.lexsort((coo.col, coo.data, coo.row))
        return (coo.row[order].astype(np.int64), coo.col[order].astype(np.int64), None)

    def _focused(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        history = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        history.eliminate_zeros()
        if self.focus != 1.0:
            history.data = np.power(history.data, np.float32(self.focus))
        return history

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted()
        history = self._focused(user_items)
        one = spread_rows(self.transitions, history)  # a single user (serving)
        raw = one if one is not None else (history @ self.transitions).toarray()
        return _with_prior(raw, self._prior)

    def similar_items(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """What most often follows `item`, strongest first (ties by item index)."""
        self._check_fitted()
        start, stop = self.transitions.indptr[item], self.transitions.indptr[item + 1]
        ids = self.transitions.indices[start:stop].astype(np.int64)
        values = self.transitions.data[start:stop]
        order = np.lexsort((ids, -values))[:k]
        return ids[order], values[order]

    def reason(self, seen: np.ndarray, item: int, source: str, contribution: float = 0.0,
               weights: np.ndarray | None = None) -> Reason | None:
        """The history item with the biggest transition weight into `item` (times its
        focused history weight when `weights`, aligned with `seen`, are given); None when no
        history item leads to `item`."""
        self._check_fitted()
        seen = np.asarray(seen, dtype=np.int64)
        if not len(seen):
            return None
        column = np.asarray(self.transitions[seen][:, [item]].todense()).ravel()
        if weights is not None:
            column = column * np.power(np.asarray(weights, dtype=np.float64), self.focus)
        best = int(np.argmax(column))
        if column[best] <= 0:
            return None
        return Reason(source, contribution, int(seen[best]))

    def save(self, path: str | Path) -> Path:
        """Parameters and the pruned transition matrix as an `.npz` (no pickle)."""
        self._check_fitted()
        path = _npz(path)
        t = self.transitions
        np.savez(path, data=t.data, indices=t.indices, indptr=t.indptr, prior=self._prior,
                 n_users=self.n_users, n_items=self.n_items, window=self.window,
                 decay=self.decay, beta=self.beta, focus=self.focus,
                 neighbours=self.neighbours,
                 max_gap_days=-1.0 if self.max_gap_days is None else self.max_gap_days,
                 note=np.str_(self.note))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Transitions:
        with np.load(Path(path), allow_pickle=False) as data:
            gap = float(data["max_gap_days"])
            model = cls(int(data["window"]), float(data["decay"]), float(data["beta"]),
                        float(data["focus"]), int(data["neighbours"]),
                        None if gap < 0 else gap)
            model.n_users, model.n_items = int(data["n_users"]), int(data["n_items"])
            model.transitions = sp.csr_matrix(
                (data["data"], data["indices"], data["indptr"]),
                shape=(model.n_items, model.n_items))
            model._prior = data["prior"].astype(np.float64)
            model.note = str(data["note"])
        return model


def _prune(matrix: sp.spmatrix, keep: int) -> sp.csr_matrix:
    """Each row's `keep` largest entries (ties by column), float32 CSR."""
    coo = sp.coo_matrix(matrix)
    row, col, val = coo.row, coo.col, coo.data
    useful = val > 0
    row, col, val = row[useful], col[useful], val[useful]
    order = np.lexsort((col, -val, row))
    row, col, val = row[order], col[order], val[order]
    first = np.searchsorted(row, np.arange(matrix.shape[0]))
    kept = (np.arange(len(row)) - first[row]) < keep
    out = sp.csr_matrix((val[kept].astype(np.float32), (row[kept], col[kept])),
                        shape=matrix.shape, dtype=np.float32)
    out.sort_indices()
    return out
