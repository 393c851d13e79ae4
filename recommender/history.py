"""User histories as weighted matrices: recent interactions count more.

What a shopper does next follows what they did last far more than what they did a year ago;
on ml-100k's temporal split, weighting each user's history by recency lifted ALS's
validation NDCG@20 from 0.195 to 0.215 and item-to-item co-occurrence from 0.201 to 0.237.
The weight is positional, so it needs no tuning per data set's time scale: a user's most
recent distinct product weighs 1, the one before 0.5 ** (1 / half_life), and so on.

What a shopper did matters too: a purchase says more than a view, and a product bought ten
times more than one bought once. With `kind_weights` each (user, product) pair's weight is
multiplied by its confidence log2(1 + sum of kind weight x count over its interactions), which
is 1 for a single purchase (or any single interaction of a kind not listed), 0.26 for a single
view, 2 for three purchases: logarithmic, so a staple bought every week does not drown out
everything else (Hu, Koren & Volinsky's log confidence).

Calendar time instead of position (`decay="time"`, issue 12): a pair weighs
0.5 ** ((t_ref - ts) / half-life) with `ts` its latest interaction and `t_ref` the training
cut (the latest training timestamp). `t_ref` is fixed when the model is trained and kept for
serving: a live event at or after `t_ref` weighs 1, the cap, never more, so one click after
the cut cannot outweigh a purchase made the day before it, and a refit with the same rows
gives the same weights. The half-life is learned on the time-cut validation
(`training.tune_and_fit`), because a grocery basket and a film rating age on different
clocks; positional decay stays the default where that is not better on validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

DEFAULT_HALF_LIFE = 5.0
DAY = 86_400  # seconds
DECAYS = ("position", "time")
DEFAULT_KIND_WEIGHTS: dict[str, float] = {"purchase": 1.0, "cart": 0.5, "view": 0.2}


def confidence(frame: pd.DataFrame, kind_weights: Mapping[str, float],
               user: str = "user", item: str = "item") -> pd.DataFrame:
    """One row per (user, item) with `confidence` = log2(1 + sum(kind weight x count)).

    `kind` and `count` columns are optional: a missing kind (or one not in `kind_weights`)
    weighs 1, a missing count is 1, so every row counts as one interaction of weight 1.
    """
    weights = np.ones(len(frame), dtype=np.float64)
    if "kind" in frame:
        kinds = frame["kind"].astype(str)
        weights = kinds.map(dict(kind_weights)).fillna(1.0).to_numpy(dtype=np.float64)
    if "count" in frame:
        counts = pd.to_numeric(frame["count"], errors="coerce").fillna(1.0).to_numpy()
        weights = weights * np.maximum(counts, 0.0)
    totals = (pd.DataFrame({user: frame[user].to_numpy(), item: frame[item].to_numpy(),
                            "w": weights})
              .groupby([user, item], sort=False)["w"].sum().reset_index())
    totals["confidence"] = np.log2(1.0 + totals.pop("w").to_numpy()).astype(np.float32)
    return totals


def recency_weights(frame: pd.DataFrame, half_life: float = DEFAULT_HALF_LIFE,
                    user: str = "user", item: str = "item", ts: str = "ts") -> pd.DataFrame:
    """One row per (user, item) with `weight` = 0.5 ** (age / half_life).

    `age` counts the user's distinct items interacted with after this one (by each pair's
    latest `ts`; ties by item), so the latest is 0. Rows are returned sorted by user, then
    time.
    """
    if half_life <= 0:
        raise ValueError("half_life must be > 0")
    missing = [c for c in (user, item, ts) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}")
    latest = (frame.groupby([user, item], sort=False)[ts].max().reset_index()
              .sort_values([user, ts, item], kind="stable"))
    age = latest.groupby(user, sort=False).cumcount(ascending=False).to_numpy()
    return latest.assign(weight=np.power(0.5, age / float(half_life)).astype(np.float32))


def time_weights(frame: pd.DataFrame, half_life_days: float, t_ref: float | None = None,
                 user: str = "user", item: str = "item", ts: str = "ts") -> pd.DataFrame:
    """One row per (user, item) with `weight` = 0.5 ** (max(0, t_ref - ts) / half-life).

    `ts` is the pair's latest timestamp (seconds), `t_ref` the training cut (default: the
    latest `ts` in `frame`); anything at or after `t_ref` weighs 1 (the cap).
    """
    if not half_life_days > 0:
        raise ValueError("half_life_days must be > 0")
    missing = [c for c in (user, item, ts) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}")
    latest = frame.groupby([user, item], sort=False)[ts].max().reset_index()
    if t_ref is None:
        t_ref = float(latest[ts].max()) if len(latest) else 0.0
    age = np.maximum(float(t_ref) - latest[ts].to_numpy(np.float64), 0.0)
    weight = np.power(0.5, age / (float(half_life_days) * DAY))
    return latest.assign(weight=weight.astype(np.float32))


def history_matrix(frame: pd.DataFrame, shape: tuple[int, int],
                   half_life: float | None = DEFAULT_HALF_LIFE, user: str = "user",
                   item: str = "item", ts: str = "ts",
                   kind_weights: Mapping[str, float] | None = None, decay: str = "position",
                   half_life_days: float | None = None, t_ref: float | None = None
                   ) -> sp.csr_matrix:
    """Users x items CSR of recency weights (`half_life=None`: 1 per distinct pair), times
    each pair's kind-and-count confidence when `kind_weights` is given.

    `decay="time"` weighs by calendar age instead (`time_weights(half_life_days, t_ref)`);
    `half_life` is then ignored.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, not {decay!r}")
    if decay == "time":
        if half_life_days is None:
            raise ValueError('decay="time" needs half_life_days')
        pairs = time_weights(frame, half_life_days, t_ref, user, item, ts)
        values = pairs["weight"].to_numpy(dtype=np.float32)
    elif half_life is None:
        pairs = frame[[user, item]].drop_duplicates()
        values = np.ones(len(pairs), dtype=np.float32)
    else:
        pairs = recency_weights(frame, half_life, user, item, ts)
        values = pairs["weight"].to_numpy(dtype=np.float32)
    if kind_weights is not None and len(pairs):
        strength = confidence(frame, kind_weights, user, item)
        values = values * pairs[[user, item]].merge(
            strength, on=[user, item], how="left")["confidence"].to_numpy(np.float32)
    return sp.csr_matrix((values, (pairs[user].to_numpy(np.int64),
                                   pairs[item].to_numpy(np.int64))), shape=shape)


@dataclass(frozen=True)
class HistoryWeighting:
    """How a trained model weighs histories, kept with it so serving builds the same rows.

    `decay="position"` uses `half_life` (interactions; None = unweighted), `decay="time"`
    uses `half_life_days` from the fixed training cut `t_ref`.
    """

    decay: str = "position"
    half_life: float | None = DEFAULT_HALF_LIFE
    half_life_days: float | None = None
    t_ref: float | None = None
    kind_weights: Mapping[str, float] | None = None

    def matrix(self, frame: pd.DataFrame, shape: tuple[int, int]) -> sp.csr_matrix:
        """`frame`'s users x items matrix under this weighting."""
        return history_matrix(frame, shape, self.half_life, kind_weights=self.kind_weights,
                              decay=self.decay, half_life_days=self.half_life_days,
                              t_ref=self.t_ref)

    @property
    def weighted(self) -> bool:
        """Whether rows carry weights other than 1 (what item-kNN's `weighted_history` asks)."""
        return (self.decay == "time" or self.half_life is not None
                or self.kind_weights is not None)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> HistoryWeighting:
        """From a trained model's summary (`train.json` "config" plus "tuning")."""
        fields = {k: data[k] for k in ("decay", "half_life", "half_life_days", "t_ref",
                                       "kind_weights") if k in data}
        return cls(**fields)  # type: ignore[arg-type]
