"""The `GraphStore` protocol: one interface over Neo4j and the embedded store.

Implementations provide a handful of primitives (upsert a validated batch, look up ids, list
adjacent nodes, read whole tables); everything else — validation before writing, breadth-first
neighbourhoods, interaction queries, counts — is written once here so both stores behave alike.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from kg.schema import (
    NODE_LABELS,
    REL_TYPES,
    GraphBatch,
    RelType,
    Scalar,
)

if TYPE_CHECKING:
    from kg.group_commit import GroupCommitter

NodeRef = tuple[str, str]  # (label, id)


@dataclass(frozen=True)
class Neighbour:
    """A node reached from a start node, with the hop that reached it."""

    label: str
    id: str
    distance: int
    via: str  # relationship type of the last hop
    from_node: NodeRef
    props: dict[str, Scalar] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LoadReport:
    """What one load wrote: rows per label / relationship type after de-duplication."""

    nodes: dict[str, int]
    relationships: dict[str, int]


@dataclass(frozen=True)
class InteractionEvent:
    """One live shopper event to record: the edge (user, product, kind) grows by one.

    `event_id` is the client's idempotency key: an event whose id the store has already
    recorded is answered as a duplicate and changes nothing, so a retry never counts twice.
    """

    user_id: str
    product_id: str
    kind: str
    ts: int
    weight: float = 1.0
    event_id: str | None = None


EventStatus = Literal["recorded", "duplicate", "unknown_product"]


@dataclass(frozen=True)
class RecordedInteraction:
    """What recording one event did, with the INTERACTED edge's count and weight as the
    event left them (its `ts` is the latest of all its events, in the store).

    `seq` is the event's position in the store's event log (what `events_since` pages by);
    a duplicate reports the edge as it is now and the seq of the first recording.
    """

    event: InteractionEvent
    status: EventStatus
    count: int = 0
    weight: float = 0.0
    new_user: bool = False
    seq: int | None = None


@dataclass(frozen=True)
class LoggedEvent:
    """An event from the store's log, for other processes to replay what one of them wrote."""

    seq: int
    event: InteractionEvent


def row_props(row: dict[str, Any], skip: Iterable[str] = ()) -> dict[str, Scalar]:
    """A table row as node/relationship properties: nulls dropped, numpy scalars unwrapped."""
    skipped = set(skip)
    out: dict[str, Scalar] = {}
    for k, v in row.items():
        if k in skipped or v is None or v is pd.NA or (isinstance(v, float) and v != v):
            continue
        out[k] = v.item() if hasattr(v, "item") else v
    return out


_COMMITTER_LOCK = threading.Lock()


class GraphStore(ABC):
    """The system of record for products, brands, categories, users and their links."""

    name: str = "store"
    _committer: GroupCommitter | None = None  # started by the first `record_events`

    # ---- primitives each store implements -------------------------------------------------
    @abstractmethod
    def existing_ids(self, label: str, ids: Iterable[str]) -> set[str]:
        """The subset of `ids` that exist as nodes of `label`."""

    @abstractmethod
    def _write(self, batch: GraphBatch, progress: bool) -> None:
        """Upsert a batch that has already been validated."""

    @abstractmethod
    def node_table(self, label: str) -> pd.DataFrame:
        """All nodes of `label`: column `id` plus one column per property."""

    @abstractmethod
    def rel_table(self, rel: RelType) -> pd.DataFrame:
        """All relationships of `rel`: columns `source`, `target`, `key` plus properties."""

    @abstractmethod
    def get_node(self, label: str, node_id: str) -> dict[str, Scalar] | None:
        """One node's properties (including `id`), or None when absent."""

    @abstractmethod
    def _adjacent(
        self, frontier: list[NodeRef], rel_types: list[str] | None
    ) -> list[tuple[NodeRef, str, NodeRef]]:
        """(from, relationship type, to) for every relationship touching the frontier."""

    @abstractmethod
    def _interaction_rows(
        self, user_id: str | None, product_id: str | None, kind: str | None
    ) -> pd.DataFrame:
        """INTERACTED relationships filtered by whichever ids are given (table layout)."""

    @abstractmethod
    def delete_nodes(self, label: str, ids: Iterable[str]) -> int:
        """Delete nodes and every relationship touching them; returns nodes deleted."""

    @abstractmethod
    def delete_relationships(self, rel: RelType, keys: Iterable[tuple[str, str, str]]) -> int:
        """Delete relationships given as (source, target, key); returns how many were deleted."""

    @abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """`{"nodes": {label: n}, "relationships": {type: n}}` for every schema label and type."""

    @abstractmethod
    def clear(self) -> None:
        """Remove everything (tests, re-imports from scratch)."""

    @abstractmethod
    def record_interactions(self, events: Sequence[InteractionEvent]
                            ) -> list[RecordedInteraction]:
        """Record live events in one durable transaction, in order; one result per event.

        Each event MERGEs its User (created when new) and increments the INTERACTED edge's
        `count` by one and `weight` by the event's weight, keeping the latest `ts`; an event
        for an unknown product, or whose `event_id` is already logged, writes nothing. Every
        recorded event is appended to the event log. All or nothing: when the store fails,
        no event of the call is recorded.
        """

    @abstractmethod
    def events_since(self, seq: int, limit: int = 10_000) -> list[LoggedEvent]:
        """Logged events with a sequence number above `seq`, oldest first."""

    def latest_event_seq(self) -> int:
        """The newest sequence number in the event log (0 when empty)."""
        seq = 0
        while logged := self.events_since(seq):
            seq = logged[-1].seq
        return seq

    def record_events(self, events: Sequence[InteractionEvent],
                      timeout: float | None = None) -> list[RecordedInteraction]:
        """`record_interactions` through group commit: concurrent callers share one
        transaction (one flush), and each returns once its own events are durable."""
        committer = self._committer
        if committer is None:
            with _COMMITTER_LOCK:
                committer = self._committer
                if committer is None:
                    from kg.group_commit import GroupCommitter

                    committer = GroupCommitter(self.record_interactions,
                                               name=f"{self.name}-group-commit")
                    self._committer = committer
        return committer.submit(events, timeout)

    def close(self) -> None:
        """Release connections or files; the store is unusable afterwards."""
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.close()

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- behaviour shared by every store --------------------------------------------------
    def load(self, batch: GraphBatch, progress: bool = False) -> LoadReport:
        """Validate `batch` against itself and the stored ids, then upsert it.

        Validation happens before the first write, so bad input leaves the store unchanged;
        writes MERGE on ids, so loading the same batch twice gives the same graph.
        """
        batch.check_endpoints(self.existing_ids)
        self._write(batch, progress)
        return LoadReport(
            nodes={lb: len(batch.node_frame(lb)) for lb in batch.labels},
            relationships={r.name: len(batch.rel_frame(r)) for r in batch.rel_types},
        )

    def neighbours(
        self, label: str, node_id: str, depth: int = 1,
        rel_types: Iterable[str] | None = None, limit: int | None = None,
    ) -> list[Neighbour]:
        """Nodes within `depth` hops of a start node (either direction), nearest first."""
        if label not in NODE_LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {NODE_LABELS}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        types = sorted(set(rel_types)) if rel_types is not None else None
        for t in types or []:
            if t not in REL_TYPES:
                raise ValueError(f"unknown relationship type {t!r}; expected one of "
                                 f"{sorted(REL_TYPES)}")
        start = (label, str(node_id))
        if self.get_node(*start) is None:
            raise KeyError(f"no {label} with id {node_id!r}")
        seen: dict[NodeRef, Neighbour] = {}
        frontier = [start]
        for distance in range(1, depth + 1):
            reached: dict[NodeRef, Neighbour] = {}
            for src, rel, dst in sorted(self._adjacent(frontier, types)):
                if dst == start or dst in seen or dst in reached:
                    continue
                reached[dst] = Neighbour(dst[0], dst[1], distance, rel, src)
            seen.update(reached)
            frontier = sorted(reached)
            if not frontier or (limit is not None and len(seen) >= limit):
                break
        found = sorted(seen.values(), key=lambda n: (n.distance, n.label, n.id))[:limit]
        return [
            Neighbour(n.label, n.id, n.distance, n.via, n.from_node,
                      self.get_node(n.label, n.id) or {})
            for n in found
        ]

    def interactions(
        self, user_id: str | None = None, product_id: str | None = None,
        kind: str | None = None,
    ) -> pd.DataFrame:
        """Interactions as rows `user_id, product_id, kind, weight, ts, count, ...`."""
        rows = self._interaction_rows(
            None if user_id is None else str(user_id),
            None if product_id is None else str(product_id),
            kind,
        )
        rows = rows.sort_values(["source", "target", "key"]).reset_index(drop=True)
        rows = rows.assign(kind=rows["key"]).drop(columns=["key"])
        return rows.rename(columns={"source": "user_id", "target": "product_id"})

    def tables(self) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
        """Every node and relationship table: the snapshot that export builds on."""
        nodes = {label: self.node_table(label) for label in NODE_LABELS}
        rels = {name: self.rel_table(rel) for name, rel in REL_TYPES.items()}
        return nodes, rels

