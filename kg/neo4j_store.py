"""`Neo4jStore`: the product graph in Neo4j over Bolt with the official driver.

All values travel as query parameters; the only text put into Cypher is a label or
relationship type taken from the fixed schema (Cypher cannot parameterize those). Every write
runs in a managed transaction, which the driver retries on transient errors (deadlocks,
leader changes, dropped connections).

Loads (`GraphStore.load` -> `_write`) are batched `UNWIND $rows` statements of `batch_rows`
rows each, run on `workers` sessions at once: first every node chunk (the batch holds each id
once, so no two chunks touch the same node), then every relationship chunk. A label or
relationship type with no rows in the database yet is written with `CREATE` (the batch is
already de-duplicated per id and per (source, target, key)), otherwise with `MERGE`, so
loading the same data twice gives the same graph. Bad input is rejected before the first
write (`GraphStore.load` validates the whole batch). A load is *not* one transaction,
though: a crash or lost connection midway leaves the chunks committed so far in the
database; loading the same batch again completes it (the types written so far are then
non-empty and get the idempotent `MERGE`). Two processes loading the same, still empty,
label or type at the same moment could both take the `CREATE` path; don't.

Live events (`record_interactions`) are one write transaction per group: one small
statement locks the event-sequence counter and looks up the logged event ids, products and
users, one `UNWIND` over the group's distinct edges writes users, edges and the event log.
The log is `(:LiveEvent {seq, event_id, user_id, product_id, kind, ts, weight})` nodes without
relationships, numbered by the counter node `(:EventSeq {name: 'events', last})`; both labels
are internal and never appear in counts, tables or neighbourhoods.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from kg.schema import (
    ENDPOINT_COLUMNS,
    INTERACTED,
    NODE_LABELS,
    REL_TYPES,
    GraphBatch,
    RelType,
    Scalar,
)
from kg.store import (
    GraphStore,
    InteractionEvent,
    LoggedEvent,
    NodeRef,
    RecordedInteraction,
)

BATCH_ROWS = 10_000
LOAD_WORKERS = min(4, os.cpu_count() or 2)  # sessions a load writes on at once

EdgeKey = tuple[str, str, str]  # (user id, product id, kind)
EdgeState = tuple[int, float, int]  # (count, weight, ts)

# Statement 1 of a group: take the counter's write lock (so concurrent groups, from this or
# another process, run one after another and never both log an event id), then look up
# which event ids are logged already and which products and users exist.
_LOCK_AND_LOOK_UP = """
MERGE (c:EventSeq {name: 'events'}) ON CREATE SET c.last = 0
SET c.locked = true REMOVE c.locked
WITH c.last AS last
CALL { UNWIND $event_ids AS id MATCH (e:LiveEvent {event_id: id})
       RETURN collect([id, e.seq]) AS logged }
CALL { UNWIND $product_ids AS id MATCH (p:Product {id: id}) RETURN collect(id) AS products }
CALL { UNWIND $user_ids AS id MATCH (u:User {id: id}) RETURN collect(id) AS users }
RETURN last, logged, products, users
"""

# Statement 2: one row per distinct edge, carrying its events in order. Returns each edge's
# state before the group; the running state after each event is derived from it in Python
# with the same arithmetic (`reduce` adds the weights in the same order).
_RECORD = """
MATCH (c:EventSeq {name: 'events'}) SET c.last = $last
WITH c
UNWIND $rows AS row
MATCH (p:Product {id: row.p})
MERGE (u:User {id: row.u})
MERGE (u)-[r:INTERACTED {kind: row.k}]->(p)
ON CREATE SET r.count = 0, r.weight = 0.0, r.ts = 0
WITH row, r, coalesce(r.count, 1) AS count, coalesce(r.weight, 1.0) AS weight,
     coalesce(r.ts, 0) AS ts
SET r.count = count + size(row.events),
    r.weight = reduce(w = weight, e IN row.events | w + e.w),
    r.ts = reduce(t = ts, e IN row.events | CASE WHEN e.ts > t THEN e.ts ELSE t END)
FOREACH (e IN row.events | CREATE (:LiveEvent {seq: e.seq, event_id: e.id, user_id: row.u,
    product_id: row.p, kind: row.k, ts: e.ts, weight: e.w}))
RETURN row.u AS u, row.p AS p, row.k AS k, count, weight, ts
"""

_EDGE_STATES = """
UNWIND $keys AS key
MATCH (:User {id: key[0]})-[r:INTERACTED {kind: key[2]}]->(:Product {id: key[1]})
RETURN key, r.count AS count, r.weight AS weight, r.ts AS ts
"""


@dataclass(frozen=True)
class Neo4jSettings:
    """Where and how to reach Neo4j; read from NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD."""

    uri: str = "bolt://127.0.0.1:7687"
    user: str = "neo4j"
    password: str = ""
    database: str | None = None

    @classmethod
    def from_env(cls) -> Neo4jSettings:
        return cls(
            uri=os.environ.get("NEO4J_URI", cls.uri),
            user=os.environ.get("NEO4J_USER", cls.user),
            password=os.environ.get("NEO4J_PASSWORD", cls.password),
            database=os.environ.get("NEO4J_DATABASE") or None,
        )


def _chunks(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _column(series: pd.Series) -> list[Any]:
    """A column as plain Python values, None for every kind of null."""
    values = series.to_numpy(dtype=object, na_value=None).tolist()
    if series.dtype == object:  # may hold numpy scalars or float NaN
        values = [None if v is None or (isinstance(v, float) and v != v)
                  else (v.item() if hasattr(v, "item") else v) for v in values]
    return values


def _rows(frame: pd.DataFrame, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """DataFrame rows as property maps without nulls (Neo4j stores no nulls).

    Column by column rather than through `to_dict("records")`: several times faster on a
    million relationships, same values as `kg.store.row_props`."""
    skipped = set(skip)
    names = [c for c in frame.columns if c not in skipped]
    columns = [_column(frame[c]) for c in names]
    return [{k: v for k, v in zip(names, values) if v is not None}
            for values in zip(*columns)] if names else [{} for _ in range(len(frame))]


Job = Callable[[], tuple[str, dict[str, Any], int]]  # -> (query, parameters, rows)


def _job(query: str, params: Callable[[pd.DataFrame], dict[str, Any]], part: pd.DataFrame
         ) -> Job:
    """A chunk to write; its parameters are built when it runs, so memory stays small."""
    return lambda: (query, params(part), len(part))


def _consume(tx: Any, query: str, params: dict[str, Any]) -> None:
    tx.run(query, params).consume()


def _grouped(part: pd.DataFrame, group: str, other: str) -> dict[str, Any]:
    """Relationship rows sorted by `group` as parameters: `groups` = [id, start, end] per
    run of equal `group` ids, then per row the `other` endpoint's id and the properties."""
    keys = part[group].tolist()
    groups, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            groups.append([keys[start], start, i])
            start = i
    return {"groups": groups, "ids": part[other].tolist(),
            "props": _rows(part, ENDPOINT_COLUMNS)}


def _label(label: str) -> str:
    if label not in NODE_LABELS:
        raise ValueError(f"unknown label {label!r}")
    return label


class Neo4jStore(GraphStore):
    """A graph store in a Neo4j 5 database; creates its constraints on first use."""

    name = "neo4j"

    def __init__(self, settings: Neo4jSettings | None = None, batch_rows: int = BATCH_ROWS,
                 workers: int = LOAD_WORKERS) -> None:
        import neo4j  # imported here so `kg` stays importable without a driver configured

        self.settings = settings or Neo4jSettings.from_env()
        self.batch_rows = batch_rows
        self.workers = max(1, workers)
        self._driver = neo4j.GraphDatabase.driver(
            self.settings.uri, auth=(self.settings.user, self.settings.password),
            notifications_min_severity="OFF",  # e.g. "type REL does not exist yet" on counts
        )
        try:
            self._driver.verify_connectivity()
        except Exception as exc:
            self._driver.close()
            raise ConnectionError(
                f"cannot reach Neo4j at {self.settings.uri} as {self.settings.user!r}: {exc} "
                "(set NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD)"
            ) from exc
        self._ensure_schema()

    # ---- plumbing -------------------------------------------------------------------------
    def _session(self) -> Any:
        return self._driver.session(database=self.settings.database)

    def _read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with self._session() as session:
            return session.execute_read(lambda tx: [r.data() for r in tx.run(query, params)])

    def _write_tx(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with self._session() as session:
            return session.execute_write(lambda tx: [r.data() for r in tx.run(query, params)])

    def _ensure_schema(self) -> None:
        """Uniqueness constraints (which also index `id`) for every label, and for the event
        log's `seq` and `event_id` and its counter; idempotent."""
        for label in NODE_LABELS:
            self._write_tx(
                f"CREATE CONSTRAINT {label.lower()}_id IF NOT EXISTS "
                f"FOR (n:{_label(label)}) REQUIRE n.id IS UNIQUE"
            )
        for name, label, prop in (("live_event_seq", "LiveEvent", "seq"),
                                  ("live_event_id", "LiveEvent", "event_id"),
                                  ("event_seq_name", "EventSeq", "name")):
            self._write_tx(f"CREATE CONSTRAINT {name} IF NOT EXISTS "
                           f"FOR (n:{label}) REQUIRE n.{prop} IS UNIQUE")
        self._write_tx("CALL db.awaitIndexes(300)")

    def close(self) -> None:
        super().close()  # stops the group-commit thread, committing what it holds
        self._driver.close()

    # ---- GraphStore primitives ------------------------------------------------------------
    def existing_ids(self, label: str, ids: Iterable[str]) -> set[str]:
        wanted = [str(i) for i in ids]
        found: set[str] = set()
        for chunk in _chunks(wanted, 50_000):
            rows = self._read(
                f"UNWIND $ids AS id MATCH (n:{_label(label)} {{id: id}}) RETURN n.id AS id",
                ids=chunk,
            )
            found.update(r["id"] for r in rows)
        return found

    def _write(self, batch: GraphBatch, progress: bool) -> None:
        total = batch.row_count()
        with tqdm(total=total, desc="neo4j: write", unit="row", disable=not progress) as bar:
            jobs = [job for label in batch.labels for job in self._node_jobs(batch, label)]
            self._run_streams([jobs[k::self.workers] for k in range(self.workers)], bar.update)
            for rel in batch.rel_types:
                self._run_streams(self._rel_streams(rel, batch.rel_frame(rel)), bar.update)

    def _node_jobs(self, batch: GraphBatch, label: str) -> list[Job]:
        """One job per chunk of `label`'s nodes; the batch holds each id once, so chunks
        never touch the same node and may all run at once."""
        if self._is_empty(f"MATCH (n:{_label(label)})"):
            query = f"UNWIND $rows AS row CREATE (n:{label}) SET n = row"
        else:
            query = f"UNWIND $rows AS row MERGE (n:{label} {{id: row.id}}) SET n += row"
        frame = batch.node_frame(label)
        return [_job(query, lambda part: {"rows": _rows(part)}, frame.iloc[i:i + self.batch_rows])
                for i in range(0, len(frame), self.batch_rows)]

    def _rel_streams(self, rel: RelType, frame: pd.DataFrame) -> list[list[Job]]:
        """`rel`'s rows as `workers` streams of chunks, each stream run in order.

        Rows are grouped by the endpoint with fewer distinct ids (a User's purchases, a
        Brand's products): one index lookup per group instead of per row. Each stream owns a
        contiguous range of those group nodes, so transactions running at once never wait
        on each other's group-node locks (the other endpoint may be shared; a deadlock
        between two of them is retried by the driver)."""
        by_source = frame["source"].nunique() <= frame["target"].nunique()
        group, other = ("source", "target") if by_source else ("target", "source")
        frame = frame.sort_values([group, other], kind="stable").reset_index(drop=True)
        query = self._rel_query(rel, self._is_empty(f"MATCH ()-[n:{rel.name}]->()"), by_source)
        keys = frame[group].tolist()
        bounds = [0]
        for k in range(1, self.workers):
            cut = max(bounds[-1], k * len(keys) // self.workers)
            while 0 < cut < len(keys) and keys[cut] == keys[cut - 1]:
                cut += 1
            bounds.append(cut)
        bounds.append(len(keys))
        return [[_job(query, lambda part: _grouped(part, group, other),
                      frame.iloc[i:min(i + self.batch_rows, stop)])
                 for i in range(start, stop, self.batch_rows)]
                for start, stop in zip(bounds, bounds[1:]) if stop > start]

    @staticmethod
    def _rel_query(rel: RelType, fresh: bool, by_source: bool) -> str:
        """The chunk statement for `rel`: CREATE while the type is empty, else MERGE."""
        outer, inner = ("a", "b") if by_source else ("b", "a")
        labels = {"a": _label(rel.source), "b": _label(rel.target)}
        query = (f"UNWIND $groups AS g MATCH ({outer}:{labels[outer]} {{id: g[0]}}) "
                 f"UNWIND range(g[1], g[2] - 1) AS i "
                 f"MATCH ({inner}:{labels[inner]} {{id: $ids[i]}}) ")
        if fresh:
            return query + f"CREATE (a)-[r:{rel.name}]->(b) SET r = $props[i]"
        keyed = f" {{{rel.key}: $props[i].{rel.key}}}" if rel.key else ""
        return query + f"MERGE (a)-[r:{rel.name}{keyed}]->(b) SET r += $props[i]"

    def _is_empty(self, pattern: str) -> bool:
        """Whether a label or type has no rows yet (answered by Neo4j's count store)."""
        return self._read(f"{pattern} RETURN count(n) AS c")[0]["c"] == 0

    def _run_streams(self, streams: list[list[Job]], done: Callable[[int], object]) -> None:
        """Run each stream's jobs in order on its own session, the streams side by side;
        after the first error no stream starts another job, and that error is raised."""
        streams = [s for s in streams if s]
        failed = threading.Event()

        def run(stream: list[Job]) -> None:
            with self._session() as session:
                for job in stream:
                    if failed.is_set():
                        return
                    query, params, rows = job()
                    try:
                        session.execute_write(_consume, query, params)
                    except BaseException:
                        failed.set()
                        raise
                    done(rows)

        if len(streams) <= 1:
            for stream in streams:
                run(stream)
            return
        with ThreadPoolExecutor(len(streams), thread_name_prefix="neo4j-load") as pool:
            for future in [pool.submit(run, s) for s in streams]:
                future.result()

    def node_table(self, label: str) -> pd.DataFrame:
        rows = self._read(f"MATCH (n:{_label(label)}) RETURN properties(n) AS p")
        frame = pd.DataFrame([r["p"] for r in rows])
        if frame.empty:
            return pd.DataFrame({"id": pd.Series(dtype=str)})
        return frame.sort_values("id").reset_index(drop=True)

    def rel_table(self, rel: RelType) -> pd.DataFrame:
        rows = self._read(
            f"MATCH (a:{_label(rel.source)})-[r:{rel.name}]->(b:{_label(rel.target)}) "
            "RETURN a.id AS source, b.id AS target, properties(r) AS p"
        )
        return _rel_frame(rel, rows)

    def get_node(self, label: str, node_id: str) -> dict[str, Scalar] | None:
        rows = self._read(f"MATCH (n:{_label(label)} {{id: $id}}) RETURN properties(n) AS p",
                          id=str(node_id))
        return dict(rows[0]["p"]) if rows else None

    def _adjacent(
        self, frontier: list[NodeRef], rel_types: list[str] | None
    ) -> list[tuple[NodeRef, str, NodeRef]]:
        out: list[tuple[NodeRef, str, NodeRef]] = []
        by_label: dict[str, list[str]] = {}
        for label, node_id in frontier:
            by_label.setdefault(label, []).append(node_id)
        for label, ids in by_label.items():
            rows = self._read(
                f"UNWIND $ids AS id MATCH (n:{_label(label)} {{id: id}})-[r]-(m) "
                "WHERE $types IS NULL OR type(r) IN $types "
                "RETURN id, type(r) AS rel, labels(m)[0] AS label, m.id AS other",
                ids=ids, types=rel_types,
            )
            out.extend(((label, r["id"]), r["rel"], (r["label"], r["other"])) for r in rows)
        return out

    def _interaction_rows(
        self, user_id: str | None, product_id: str | None, kind: str | None
    ) -> pd.DataFrame:
        rows = self._read(
            "MATCH (u:User)-[r:INTERACTED]->(p:Product) "
            "WHERE ($user IS NULL OR u.id = $user) AND ($product IS NULL OR p.id = $product) "
            "AND ($kind IS NULL OR r.kind = $kind) "
            "RETURN u.id AS source, p.id AS target, properties(r) AS p",
            user=user_id, product=product_id, kind=kind,
        )
        return _rel_frame(INTERACTED, rows)

    def delete_nodes(self, label: str, ids: Iterable[str]) -> int:
        rows = self._write_tx(
            f"UNWIND $ids AS id MATCH (n:{_label(label)} {{id: id}}) DETACH DELETE n "
            "RETURN count(*) AS deleted",
            ids=sorted({str(i) for i in ids}),
        )
        return int(rows[0]["deleted"]) if rows else 0

    def delete_relationships(self, rel: RelType, keys: Iterable[tuple[str, str, str]]) -> int:
        keyed = f" AND r.{rel.key} = row.k" if rel.key else ""
        rows = self._write_tx(
            f"UNWIND $rows AS row "
            f"MATCH (a:{_label(rel.source)} {{id: row.s}})-[r:{rel.name}]->"
            f"(b:{_label(rel.target)} {{id: row.t}}) WHERE true{keyed} "
            "DELETE r RETURN count(*) AS deleted",
            rows=[{"s": str(s), "t": str(t), "k": str(k)} for s, t, k in keys],
        )
        return int(rows[0]["deleted"]) if rows else 0

    def counts(self) -> dict[str, dict[str, int]]:
        nodes = {
            label: self._read(f"MATCH (n:{_label(label)}) RETURN count(n) AS c")[0]["c"]
            for label in NODE_LABELS
        }
        rels = {
            name: self._read(f"MATCH ()-[r:{name}]->() RETURN count(r) AS c")[0]["c"]
            for name in REL_TYPES
        }
        return {"nodes": nodes, "relationships": rels}

    def clear(self) -> None:
        """Delete every node (the event log and its counter too), 20k per transaction."""
        while self._write_tx(
            "MATCH (n) WITH n LIMIT 20000 DETACH DELETE n RETURN count(*) AS c"
        )[0]["c"]:
            pass

    # ---- live events ----------------------------------------------------------------------
    def record_interactions(self, events: Sequence[InteractionEvent]
                            ) -> list[RecordedInteraction]:
        events = list(events)
        if not events:
            return []
        with self._session() as session:
            return session.execute_write(_record_group, events)

    def events_since(self, seq: int, limit: int = 10_000) -> list[LoggedEvent]:
        rows = self._read(
            "MATCH (e:LiveEvent) WHERE e.seq > $seq "
            "RETURN e.seq AS seq, e.event_id AS event_id, e.user_id AS user_id, "
            "e.product_id AS product_id, e.kind AS kind, e.ts AS ts, e.weight AS weight "
            "ORDER BY e.seq LIMIT $limit",
            seq=int(seq), limit=int(limit),
        )
        return [LoggedEvent(r["seq"], InteractionEvent(
            r["user_id"], r["product_id"], r["kind"], int(r["ts"]), float(r["weight"]),
            r["event_id"])) for r in rows]


    def latest_event_seq(self) -> int:
        """The event counter itself (one indexed node), not a walk through the whole log:
        every replica asks it at startup."""
        rows = self._read("MATCH (c:EventSeq {name: 'events'}) RETURN c.last AS last")
        return int(rows[0]["last"] or 0) if rows else 0


def _record_group(tx: Any, events: list[InteractionEvent]) -> list[RecordedInteraction]:
    """The body of one `record_interactions` transaction (re-run whole on a retry)."""
    head = tx.run(
        _LOCK_AND_LOOK_UP,
        event_ids=sorted({e.event_id for e in events if e.event_id is not None}),
        product_ids=sorted({e.product_id for e in events}),
        user_ids=sorted({e.user_id for e in events}),
    ).single(strict=True)
    last: int = head["last"]
    logged: dict[str, int] = {eid: seq for eid, seq in head["logged"]}
    products, users = set(head["products"]), set(head["users"])

    # Decide each event's fate in order, as the embedded store does.
    plan: list[tuple[str, int | None, bool]] = []  # (status, seq, new user)
    edges: dict[EdgeKey, list[int]] = {}  # edge -> positions of its recorded events
    for position, event in enumerate(events):
        if event.event_id is not None and event.event_id in logged:
            plan.append(("duplicate", logged[event.event_id], False))
        elif event.product_id not in products:
            plan.append(("unknown_product", None, False))
        else:
            last += 1
            if event.event_id is not None:
                logged[event.event_id] = last
            plan.append(("recorded", last, event.user_id not in users))
            users.add(event.user_id)
            edges.setdefault(_edge(event), []).append(position)

    states: dict[EdgeKey, list[EdgeState]] = {}  # edge -> its state after each event
    if edges:
        rows = [{"u": key[0], "p": key[1], "k": key[2], "events": [
            {"seq": plan[i][1], "id": events[i].event_id, "ts": int(events[i].ts),
             "w": float(events[i].weight)} for i in positions]}
            for key, positions in edges.items()]
        for r in tx.run(_RECORD, rows=rows, last=last):
            count, weight, ts = int(r["count"]), float(r["weight"]), int(r["ts"])
            after = []
            for i in edges[(r["u"], r["p"], r["k"])]:
                event = events[i]
                count, weight, ts = count + 1, weight + float(event.weight), max(ts, event.ts)
                after.append((count, weight, ts))
            states[(r["u"], r["p"], r["k"])] = after
        if len(states) != len(edges):  # a product was deleted since statement 1: roll back
            raise RuntimeError("a product disappeared while events were being recorded")

    untouched = {_edge(e) for e, p in zip(events, plan) if p[0] == "duplicate"} - set(states)
    if untouched:
        for r in tx.run(_EDGE_STATES, keys=sorted(untouched)):
            states[tuple(r["key"])] = [(int(r["count"] or 0), float(r["weight"] or 0.0),
                                        int(r["ts"] or 0))]

    results: list[RecordedInteraction] = []
    seen: dict[EdgeKey, int] = {}  # edge -> recorded events of it so far
    first_weight: dict[EdgeKey, float] = {}  # edge -> weight of its first recorded event
    for event, (status, _, _) in zip(events, plan):
        if status == "recorded":
            first_weight.setdefault(_edge(event), float(event.weight))
    for event, (status, seq, new_user) in zip(events, plan):
        key = _edge(event)
        if status == "unknown_product":
            results.append(RecordedInteraction(event, status))
            continue
        after = states.get(key, [(0, 0.0, 0)])
        done = seen.get(key, 0)
        if status == "recorded":
            count, weight, _ = after[done]
            seen[key] = done + 1
        elif done:  # a duplicate: the edge as it stood at that point of the group
            count, weight, _ = after[done - 1]
        elif key in first_weight:  # ... before the group's first event on it
            count, weight = after[0][0] - 1, after[0][1] - first_weight[key]
        else:
            count, weight, _ = after[-1]
        results.append(RecordedInteraction(event, status, count, weight, new_user=new_user,
                                           seq=seq))
    return results


def _edge(event: InteractionEvent) -> EdgeKey:
    return (event.user_id, event.product_id, event.kind)


def _rel_frame(rel: RelType, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Cypher rows (source, target, properties) in the table layout the embedded store uses."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in ENDPOINT_COLUMNS})
    props = pd.DataFrame([r["p"] for r in rows])
    frame = pd.DataFrame({
        "source": [r["source"] for r in rows],
        "target": [r["target"] for r in rows],
        "key": props[rel.key].astype(str) if rel.key else "",
    })
    frame = pd.concat([frame, props], axis=1)
    return frame.sort_values(list(ENDPOINT_COLUMNS)).reset_index(drop=True)
