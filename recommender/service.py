"""Recommendations by id, with filters, diversity, explanations, cold start and live events.

`RecommendationService.load(workspace)` reads the current trained version (see
`recommender.training`) and answers what the CLI and the HTTP API ask:

- `recommend(user_id, k, category=, brand=, exclude_*=, diversity=, explain=)`: the hybrid's
  blend for a known user, restricted by the filters (already-seen products and unavailable
  ones are always out), re-ranked with MMR when `diversity` > 0, each item with its sources
  and readable reasons. A user with fewer than `MIN_HISTORY` interactions (a new user) gets
  the most popular products of the categories they touched, or overall;
- `related(product_id, k)`: neighbours from co-purchase, the GNN, ALS and the graph paths;
  a product nobody bought yet still gets graph (and GNN-from-content) neighbours;
- `record_event(user_id, product_id, kind)`: appends to the in-memory history and re-solves
  the user's ALS factors (fold-in), so the next `recommend` reflects it without retraining.
  Writing the event to the graph store is the caller's job (the API does it first).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.base import Reason, top_k
from recommender.baselines import ItemKNN
from recommender.graph_paths import GraphPathRecommender
from recommender.history import HistoryWeighting
from recommender.hybrid import HybridRecommender, mmr
from recommender.time_aware import RecentPopularity, Transitions
from recommender.training import current_version

MIN_HISTORY = 3
POOL = 200  # candidates re-ranked by MMR and filtered per request
DETAILS = ("title", "brand", "category", "image")  # what a Recommendation shows of a product


@dataclass
class Recommendation:
    """One recommended product: its id, score, the sources behind it and why."""

    id: str
    score: float
    title: str | None = None
    brand: str | None = None
    category: str | None = None
    image: str | None = None
    sources: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(float(self.score), 6), "title": self.title,
                "brand": self.brand, "category": self.category, "image": self.image,
                "sources": self.sources, "reasons": self.reasons}


class UnknownIdError(KeyError):
    """A user or product id the trained model and its catalog do not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


class RecommendationService:
    """Serves one trained artifact version; thread-safe for concurrent requests and events."""

    def __init__(self, model: HybridRecommender, user_ids: list[str], product_ids: list[str],
                 catalog: pd.DataFrame, history: pd.DataFrame, half_life: float | None,
                 version: str = "", kind_weights: dict[str, float] | None = None,
                 weighting: HistoryWeighting | None = None) -> None:
        """`weighting` (the trained model's, see `load`) wins over `half_life` and
        `kind_weights`, which describe the positional decay of older artifacts."""
        self.model, self.version = model, version
        # live events are weighed exactly as training weighed history (a calendar-time decay
        # keeps its fixed cut t_ref, so a refit and the server agree)
        self.weighting = weighting or HistoryWeighting(half_life=half_life,
                                                       kind_weights=kind_weights)
        self.user_ids = list(user_ids)
        self.product_ids = list(product_ids)
        self.user_row = {u: i for i, u in enumerate(self.user_ids)}
        self.product_row = {p: i for i, p in enumerate(self.product_ids)}
        self.catalog = catalog.set_index("id").reindex(self.product_ids)
        columns = [c for c in ("user", "item", "ts", "kind", "count") if c in history]
        self.history = history[columns].copy()
        self._lock = threading.RLock()
        self._rows: dict[int, sp.csr_matrix] = {}  # weighted rows of users with live events
        self._pending: dict[int, list[tuple[int, int, str]]] = {}  # events not folded in yet
        self._live_items: dict[int, set[int]] = {}  # distinct products of users with events
        self._available = self._availability()
        # read per request: plain lists and lower-cased columns, built once, not per call
        self._details = {name: self._optional_column(name) for name in DETAILS}
        self._categories = np.array([c or "" for c in self._details["category"]], dtype=object)
        self._categories_lower = pd.Series(self._categories, dtype=str).str.lower()
        self._brands_lower = np.array([(b or "").lower() for b in self._details["brand"]],
                                      dtype=object)
        self._by_user = {int(u): g for u, g in self.history.groupby("user", sort=False)}
        # every trained user's weighted history in one vectorised pass (weights are per user,
        # so a row equals the user's own `history_matrix`): a per-user build costs ~20 ms
        self._trained_rows = self.weighting.matrix(self.history, (len(self.user_ids),
                                                                  len(self.product_ids)))

    @property
    def half_life(self) -> float | None:
        """The positional half-life of the recorded weighting (None under a time decay)."""
        return self.weighting.half_life

    @classmethod
    def load(cls, workspace: str | Path) -> RecommendationService:
        """The version `CURRENT` points at (FileNotFoundError when nothing is trained)."""
        directory = current_version(Path(workspace))
        ids = json.loads((directory / "ids.json").read_text())
        summary = json.loads((directory / "train.json").read_text())
        recorded = summary.get("tuning", {}).get("history")
        return cls(HybridRecommender.load(directory / "hybrid"), ids["users"], ids["products"],
                   pd.read_parquet(directory / "catalog.parquet"),
                   pd.read_parquet(directory / "history.parquet"),
                   summary["config"].get("half_life"), directory.name,
                   summary["config"].get("kind_weights"),
                   HistoryWeighting.from_dict(recorded) if recorded else None)

    # ---- lookups ---------------------------------------------------------------------------
    def _optional_column(self, name: str) -> list[str | None]:
        """`name` per product as str, None where missing or empty (or the column absent)."""
        if name not in self.catalog:
            return [None] * len(self.product_ids)
        return [None if pd.isna(cell) or cell == "" else str(cell)
                for cell in self.catalog[name].tolist()]

    def _availability(self) -> np.ndarray:
        """False for products flagged out of stock or no longer in the catalog."""
        available = np.ones(len(self.product_ids), dtype=bool)
        for flag in ("in_stock", "in_catalog"):
            if flag in self.catalog:
                values = self.catalog[flag].astype(str).str.lower()
                available &= ~values.isin(["false", "0", "no"]).to_numpy()
        return available

    def _product(self, product_id: str) -> int:
        row = self.product_row.get(str(product_id))
        if row is None:
            raise UnknownIdError(f"unknown product {product_id!r}")
        return row

    def history_of(self, user_id: str) -> list[str]:
        """The user's product ids, oldest first (training history plus recorded events)."""
        row = self.user_row.get(str(user_id))
        if row is None:
            raise UnknownIdError(f"unknown user {user_id!r}")
        with self._lock:
            self._apply_pending(row)
            events = self._by_user.get(row)
        if events is None:
            return []
        return [self.product_ids[i] for i in events.sort_values("ts", kind="stable")["item"]]

    def _history_row(self, row: int) -> sp.csr_matrix:
        """The user's weighted history: rebuilt since their last event, else as trained."""
        if row in self._pending:
            self._apply_pending(row)
        cached = self._rows.get(row)
        if cached is not None:
            return cached
        if row < self._trained_rows.shape[0]:
            return self._trained_rows[row]
        cached = self._rows[row] = self._weighted_events(row)
        return cached

    def _weighted_events(self, row: int) -> sp.csr_matrix:
        events = self._by_user.get(row)
        frame = (events.assign(user=0) if events is not None
                 else pd.DataFrame({"user": [], "item": [], "ts": []}))
        return self.weighting.matrix(frame, (1, len(self.product_ids)))

    def user_scores(self, user_id: str) -> np.ndarray | None:
        """The user's blend score for every product, or None while their history is too
        short for the blend (UnknownIdError for an unknown user); for re-ranking elsewhere."""
        row = self.user_row.get(str(user_id))
        if row is None:
            raise UnknownIdError(f"unknown user {user_id!r}")
        with self._lock:
            history = self._history_row(row)
        if history.nnz < MIN_HISTORY:
            return None
        return self.model.blend(row, history, restrict=False)[0]

    # ---- recommendations -------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, category: str | None = None,
                  brand: str | None = None, exclude_categories: tuple[str, ...] = (),
                  exclude_brands: tuple[str, ...] = (), diversity: float = 0.0,
                  explain: bool = False) -> list[Recommendation]:
        """The user's top `k` with the filters applied (see the module docstring)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        row = self.user_row.get(str(user_id))
        if row is None:
            raise UnknownIdError(f"unknown user {user_id!r}")
        with self._lock:
            history = self._history_row(row)
        allowed = self._filter(category, brand, exclude_categories, exclude_brands)
        allowed[history.indices] = False
        if history.nnz < MIN_HISTORY:
            return self._cold_start(history, allowed, k)
        filtered = bool(category or brand or exclude_categories or exclude_brands)
        scores = self.model.blend(row, history, restrict=not filtered)[0]
        scores[~allowed] = -np.inf
        ids, values = top_k(scores[None, :], max(POOL, k))
        ids, values = ids[0], values[0]
        keep = ids >= 0
        ids, values = mmr(ids[keep], values[keep], self.model.item_vectors(), k, diversity)
        explained = (self.model.explain_items(row, history, [int(i) for i in ids]) if explain
                     else [None] * len(ids))
        out = []
        for item, value, reasons in zip(ids, values, explained):
            rec = self._describe(int(item), float(value))
            if reasons is not None:
                rec.sources = [r.source for r in reasons]
                rec.reasons = [self.render(r, int(item)) for r in reasons]
            out.append(rec)
        return out

    def _filter(self, category: str | None, brand: str | None,
                exclude_categories: tuple[str, ...], exclude_brands: tuple[str, ...]
                ) -> np.ndarray:
        allowed = self._available.copy()
        categories, brands = self._categories_lower, self._brands_lower
        if category:
            allowed &= categories.str.startswith(category.strip().lower()).to_numpy()
        if brand:
            allowed &= brands == brand.strip().lower()
        for value in exclude_categories:
            allowed &= ~categories.str.startswith(value.strip().lower()).to_numpy()
        for value in exclude_brands:
            allowed &= ~(brands == value.strip().lower())
        return allowed

    def _cold_start(self, history: sp.csr_matrix, allowed: np.ndarray, k: int
                    ) -> list[Recommendation]:
        """Popularity within the categories the user touched, else overall."""
        popularity = self.model.sources["popularity"]
        counts = np.asarray(popularity.counts, dtype=np.float32).copy()
        touched = {self._categories[i] for i in history.indices if self._categories[i]}
        in_touched = np.isin(self._categories, list(touched)) if touched else None
        scores = counts.copy()
        scores[~allowed] = -np.inf
        if in_touched is not None and (in_touched & allowed).any():
            scores[~in_touched] = -np.inf
        ids, values = top_k(scores[None, :], k)
        out = []
        for item, value in zip(ids[0], values[0]):
            if item < 0:
                continue
            rec = self._describe(int(item), float(value))
            rec.sources = ["popularity"]
            rec.reasons = ([f"popular in {self._categories[item]}, which you looked at"]
                           if in_touched is not None and in_touched[item]
                           else ["popular with shoppers right now"])
            out.append(rec)
        return out

    def related(self, product_id: str, k: int = 10) -> list[Recommendation]:
        """Products related to `product_id` (itself excluded), available ones only."""
        if k < 1:
            raise ValueError("k must be >= 1")
        item = self._product(product_id)
        ids, values = self.model.similar_items(item, k=k + POOL)
        out = []
        for other, value in zip(ids, values):
            if not self._available[other]:
                continue
            rec = self._describe(int(other), float(value))
            rec.sources, rec.reasons = self._related_reasons(item, int(other))
            out.append(rec)
            if len(out) == k:
                break
        return out

    def _related_reasons(self, item: int, other: int) -> tuple[list[str], list[str]]:
        sources, reasons = [], []
        for name, source in self.model.sources.items():
            if isinstance(source, GraphPathRecommender):
                reason = source.reason(np.array([item]), other, name)
                if reason is not None:
                    sources.append(name)
                    reasons.append(self.render(reason, other))
            elif isinstance(source, ItemKNN):
                sim = source.similarity
                if sim is not None and sim[item, other] > 0:
                    sources.append(name)
                    reasons.append(f"often bought together with {self._title(item)}")
            elif isinstance(source, Transitions):
                moves = source.transitions
                if moves is not None and moves[item, other] > 0:
                    sources.append(name)
                    reasons.append(f"often bought after {self._title(item)}")
        return sources, reasons

    # ---- events ----------------------------------------------------------------------------
    def record_event(self, user_id: str, product_id: str, kind: str = "view",
                     ts: float | None = None) -> dict[str, Any]:
        """Add an interaction to the user's live history.

        Cheap on purpose (a shop posts events far more often than one shopper asks for
        recommendations): the history row is rebuilt and the user folded into ALS on the
        user's next read, once for however many events arrived meanwhile."""
        item = self._product(product_id)
        with self._lock:
            row = self.user_row.get(str(user_id))
            if row is None:  # a new user: a new row after every known one
                row = len(self.user_ids)
                self.user_ids.append(str(user_id))
                self.user_row[str(user_id)] = row
            items = self._live_items.get(row)
            if items is None:
                items = self._live_items[row] = set(self._history_row(row).indices.tolist())
            items.add(item)
            stamp = int(ts if ts is not None else time.time())
            self._pending.setdefault(row, []).append((item, stamp, str(kind)))
        return {"user": str(user_id), "product": str(product_id), "kind": kind,
                "history": len(items)}

    def _apply_pending(self, row: int) -> None:
        """Fold the user's events since their last read into the history and ALS."""
        pending = self._pending.pop(row, None)
        if not pending:
            return
        items, stamps, kinds = zip(*pending)
        events = pd.DataFrame({"user": row, "item": list(items), "ts": list(stamps),
                               "kind": list(kinds), "count": 1})
        previous = self._by_user.get(row)
        self._by_user[row] = (events if previous is None
                              else pd.concat([previous, events], ignore_index=True))
        history = self._rows[row] = self._weighted_events(row)
        als = self.model.sources.get("als")
        if als is not None and row <= len(als.user_factors):  # type: ignore[attr-defined]
            als.fold_in(row, history)  # type: ignore[attr-defined]

    def adopt_user(self, user_id: str, events: pd.DataFrame) -> int:
        """Serve a shopper this version was not trained on (e.g. one loaded into the graph
        after training) from their stored history: `events` rows `product_id, kind, ts` (and
        optional `count`); products this version does not know are skipped. Returns the
        history length; a user already known is left as is."""
        with self._lock:
            row = self.user_row.get(str(user_id))
            if row is not None:
                return int(self._history_row(row).nnz)
            items = pd.Series(events.get("product_id", pd.Series(dtype=str))).astype(str).map(
                self.product_row)
            known = items.notna().to_numpy()
            rows = events[known]
            row = len(self.user_ids)
            self.user_ids.append(str(user_id))
            self.user_row[str(user_id)] = row
            if len(rows):
                frame = pd.DataFrame({
                    "user": row, "item": items[known].astype(np.int64).to_numpy(),
                    "ts": pd.to_numeric(rows.get("ts"), errors="coerce").fillna(0)
                    .astype(np.int64).to_numpy(),
                    "kind": rows["kind"].astype(str).to_numpy() if "kind" in rows else "view",
                    "count": (pd.to_numeric(rows["count"], errors="coerce").fillna(1)
                              .astype(np.int64).to_numpy() if "count" in rows else 1)})
                self._by_user[row] = frame
            history = self._history_row(row)
            als = self.model.sources.get("als")
            if als is not None and history.nnz and row <= len(als.user_factors):  # type: ignore[attr-defined]
                als.fold_in(row, history)  # type: ignore[attr-defined]
            return int(history.nnz)

    # ---- rendering -------------------------------------------------------------------------
    def _title(self, item: int) -> str:
        return self._details["title"][item] or self.product_ids[item]

    def _describe(self, item: int, score: float) -> Recommendation:
        return Recommendation(self.product_ids[item], score,
                              *(self._details[name][item] for name in DETAILS))

    def render(self, reason: Reason, item: int) -> str:
        """A reason as a sentence a shopper (or merchant) can read."""
        holder = self._title(reason.because_of) if reason.because_of is not None else None
        name = reason.source
        source = self.model.sources.get(name)
        if isinstance(source, RecentPopularity):  # the learned window: "popular this week"
            window = source.describe()
            return window if window == "popular with shoppers" else f"trending: {window}"
        if isinstance(source, Transitions):
            return (f"often bought after {holder}" if holder
                    else "what shoppers often buy next")
        if name == "kg_entity" and holder and reason.via:
            relation = reason.relation or "related to"
            return f"knowledge graph: {self._title(item)} -[{relation}]- {reason.via} - {holder}"
        if name == "kg_brand" and holder:
            return f"same brand as {holder} ({reason.via})"
        if name == "kg_category" and holder:
            return f"in {reason.via}, like {holder}"
        if name == "kg_attribute" and holder:
            return f"shares {reason.via} with {holder}"
        if name == "copurchase" and holder:
            return f"often bought together with {holder}"
        if name in ("gnn", "graph_filter") and holder:
            return f"close to {holder} in the product graph"
        if name == "als" and holder:
            return f"shoppers with a history like yours chose it (like {holder})"
        if name == "popularity":
            return "popular with shoppers"
        return f"recommended by {name}"
