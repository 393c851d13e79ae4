"""`EmbeddedStore`: the product graph in one SQLite database, no server needed.

Why SQLite: it is the embedded transactional engine with the longest record (ACID, crash-safe,
in the standard library). In WAL mode readers never wait for the writer and see a consistent
snapshot, and a commit is one append + fsync to the write-ahead log, so a live event costs
milliseconds instead of rewriting tables (the Parquet store this replaces took about 1 s per
event on Complete Journey; `benchmarks/events.py` has the figures).

Layout in `directory/graph.sqlite`: one table per node label (`n_Product`, ...) keyed by `id`,
one per relationship type (`r_INTERACTED`, ...) keyed by `(source, target, key)` and indexed
by `target`; a property becomes a column when it is first written (no declared type, so SQLite
stores each value as given), with its pandas dtype kept in `columns`. `event_log` numbers every
live event, which is how other server processes pick up what one of them wrote.

Every write is one transaction (`BEGIN IMMEDIATE` ... `COMMIT`, `synchronous=FULL`): a failed or
interrupted load leaves the store as it was. Concurrent processes share the file; writers take
turns (a writer waits up to `BUSY_TIMEOUT_S` for another's transaction).

A workspace written by the earlier Parquet store (`CURRENT` + version directories) is migrated
on first open, in one transaction, and the old files are removed only after it committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import networkx as nx
import pandas as pd
from tqdm.auto import tqdm

from kg.schema import (
    ENDPOINT_COLUMNS,
    INTERACTED,
    NODE_LABELS,
    PRODUCT,
    REL_TYPES,
    USER,
    GraphBatch,
    RelType,
    Scalar,
    nullable,
)
from kg.store import (
    GraphStore,
    InteractionEvent,
    LoggedEvent,
    NodeRef,
    RecordedInteraction,
    row_props,
)

FORMAT_VERSION = 2  # 1 was the Parquet store (CURRENT + version directories)
DATABASE = "graph.sqlite"
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction
WRITE_CHUNK = 50_000  # rows per executemany (progress granularity; one transaction in all)
IN_LIMIT = 10_000  # ids per `IN (...)` look-up; larger sets are intersected in Python
MMAP_BYTES = 1 << 30  # address space for reading the database file through mmap
CHECKPOINT_EVERY_S = 0.5  # how often the WAL is copied back into the database file

DTYPES = ("Int64", "Float64", "boolean", "object")
EVENT_COLUMNS = {"kind": "object", "weight": "Float64", "count": "Int64", "ts": "Int64"}


def node_table_name(label: str) -> str:
    if label not in NODE_LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {NODE_LABELS}")
    return f"n_{label}"


def rel_table_name(name: str) -> str:
    if name not in REL_TYPES:
        raise ValueError(f"unknown relationship type {name!r}")
    return f"r_{name}"


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _dtype_of(series: pd.Series) -> str:
    """The stored dtype family of a batch column (after `nullable`)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "Int64"
    if pd.api.types.is_float_dtype(dtype):
        return "Float64"
    return "object"


def _widen(old: str, new: str) -> str:
    """The dtype a column keeps when rows of `new` join rows of `old`."""
    if old == new:
        return old
    if {old, new} == {"Int64", "Float64"}:
        return "Float64"
    return "object"


def _python_values(series: pd.Series) -> list[Any]:
    """A column as plain Python values with None for missing ones (what sqlite3 binds)."""
    values = series.astype(object).tolist()
    return [None if v is None or v is pd.NA or (isinstance(v, float) and v != v)
            else (v.item() if hasattr(v, "item") else v) for v in values]


class EmbeddedStore(GraphStore):
    """A graph store in `directory` (created if missing) that persists across runs."""

    name = "embedded"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DATABASE
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer per process; SQLite orders processes
        self._graph: tuple[int, nx.MultiDiGraph] | None = None
        self._closed = False
        self._checkpointer: tuple[threading.Thread, threading.Event] | None = None
        legacy = (self.directory / "CURRENT").exists()
        self._create_schema()
        if legacy:
            self._migrate_parquet()

    # ---- connections ----------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared across threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError(f"{self.path}: the store is closed")
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")  # reads straight from the OS cache
            # checkpoints run on their own thread (`_checkpoint_loop`), never inside a
            # writer's COMMIT, where copying the WAL back stalls that writer's callers
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception."""
        if self._checkpointer is None:
            self._start_checkpointer()
        with self._write_lock:
            conn = self._connection()
            self._begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _begin_immediate(conn: sqlite3.Connection) -> None:
        """Take the write lock, polling every 0.2-2 ms while another process holds it.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms between tries; against another
        server process committing every few milliseconds that sleep, not the work, would set
        every writer's latency."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.0002
        conn.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(pause)  # waiting for another process's commit
                pause = min(pause * 2, 0.002)
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several queries see one consistent state of the store."""
        conn = self._connection()
        if conn.in_transaction:  # nested inside a write or another read
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _start_checkpointer(self) -> None:
        """Copy the WAL back into the database every `CHECKPOINT_EVERY_S` (PASSIVE: never
        waits for readers or writers) on a thread of this process that writes."""
        with self._connections_lock:
            if self._checkpointer is not None or self._closed:
                return
            stop = threading.Event()

            def run() -> None:
                while not stop.wait(CHECKPOINT_EVERY_S):
                    try:
                        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:  # busy or closed: the next round tries again
                        continue
                with contextlib.suppress(sqlite3.Error, RuntimeError):
                    self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

            thread = threading.Thread(target=run, name="sqlite-checkpoint", daemon=True)
            self._checkpointer = (thread, stop)
            thread.start()

    def close(self) -> None:
        super().close()
        if self._checkpointer is not None:
            thread, stop = self._checkpointer
            stop.set()
            thread.join()
            self._checkpointer = None
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # ---- schema ---------------------------------------------------------------------------
    def _create_schema(self) -> None:
        with self._transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            found = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if found is not None and int(found[0]) != FORMAT_VERSION:
                raise RuntimeError(f"{self.path}: store format {found[0]}, this shopgraph "
                                   f"reads format {FORMAT_VERSION}")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', 0)")
            conn.execute("CREATE TABLE IF NOT EXISTS columns (tbl TEXT, col TEXT, dtype TEXT, "
                         "position INTEGER, PRIMARY KEY (tbl, col))")
            for label in NODE_LABELS:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {node_table_name(label)} "
                             "(id TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID")
            for name in REL_TYPES:
                table = rel_table_name(name)
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (source TEXT NOT NULL, "
                             "target TEXT NOT NULL, key TEXT NOT NULL, "
                             "PRIMARY KEY (source, target, key)) WITHOUT ROWID")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_target ON {table} (target)")
            conn.execute("CREATE TABLE IF NOT EXISTS event_log (seq INTEGER PRIMARY KEY, "
                         "event_id TEXT UNIQUE, user_id TEXT NOT NULL, product_id TEXT NOT "
                         "NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL, weight REAL NOT NULL)")
            self._ensure_columns(conn, rel_table_name(INTERACTED.name), EVENT_COLUMNS)

    def _columns(self, conn: sqlite3.Connection, table: str) -> dict[str, str]:
        """Property columns of `table` with their dtypes, in the order they were added."""
        rows = conn.execute("SELECT col, dtype FROM columns WHERE tbl=? ORDER BY position",
                            (table,)).fetchall()
        return dict(rows)

    def _ensure_columns(self, conn: sqlite3.Connection, table: str,
                        wanted: dict[str, str]) -> None:
        """Add missing property columns and widen dtypes (inside the caller's transaction)."""
        have = self._columns(conn, table)
        for column, dtype in wanted.items():
            if column in have:
                widened = _widen(have[column], dtype)
                if widened != have[column]:
                    conn.execute("UPDATE columns SET dtype=? WHERE tbl=? AND col=?",
                                 (widened, table, column))
                continue
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {_quote(column)}")
            conn.execute("INSERT INTO columns VALUES (?, ?, ?, ?)",
                         (table, column, dtype, len(have)))
            have[column] = dtype

    @staticmethod
    def _bump_generation(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = value + 1 WHERE key='generation'")

    # ---- bulk writes ----------------------------------------------------------------------
    def _write(self, batch: GraphBatch, progress: bool) -> None:
        with self._transaction() as conn:
            self._write_in(conn, batch, progress)
        self._graph = None

    def _write_in(self, conn: sqlite3.Connection, batch: GraphBatch, progress: bool) -> None:
        with tqdm(total=batch.row_count(), desc="embedded: write", unit="row",
                  disable=not progress) as bar:
            for label in batch.labels:
                self._upsert(conn, node_table_name(label), nullable(batch.node_frame(label)),
                             ["id"], bar)
            for rel in batch.rel_types:
                self._upsert(conn, rel_table_name(rel.name), nullable(batch.rel_frame(rel)),
                             list(ENDPOINT_COLUMNS), bar)
            self._bump_generation(conn)

    def _upsert(self, conn: sqlite3.Connection, table: str, frame: pd.DataFrame,
                keys: list[str], bar: tqdm) -> None:
        """INSERT ... ON CONFLICT DO UPDATE with `SET += row` semantics (nulls keep values)."""
        props = [c for c in frame.columns if c not in keys]
        self._ensure_columns(conn, table, {c: _dtype_of(frame[c]) for c in props})
        columns = [*keys, *props]
        updates = ", ".join(f"{_quote(c)} = coalesce(excluded.{_quote(c)}, {_quote(c)})"
                            for c in props)
        sql = (f"INSERT INTO {table} ({', '.join(map(_quote, columns))}) "
               f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT ({', '.join(keys)}) "
               + (f"DO UPDATE SET {updates}" if props else "DO NOTHING"))
        for start in range(0, len(frame), WRITE_CHUNK):
            part = frame.iloc[start:start + WRITE_CHUNK]
            conn.executemany(sql, zip(*(_python_values(part[c]) for c in columns)))
            bar.update(len(part))

    # ---- reads ----------------------------------------------------------------------------
    def _frame(self, conn: sqlite3.Connection, table: str, keys: list[str], where: str = "",
               params: Sequence[Any] = ()) -> pd.DataFrame:
        """Rows of `table` as a DataFrame in the stored dtypes, sorted by `keys`."""
        dtypes = self._columns(conn, table)
        columns = [*keys, *dtypes]
        rows = conn.execute(
            f"SELECT {', '.join(map(_quote, columns))} FROM {table} {where} "
            f"ORDER BY {', '.join(keys)}", params).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=columns)
        for key in keys:
            frame[key] = frame[key].astype(object)
        for column, dtype in dtypes.items():
            frame[column] = _as_dtype(frame[column], dtype)
        return frame

    def existing_ids(self, label: str, ids: Iterable[str]) -> set[str]:
        wanted = {str(i) for i in ids}
        if not wanted:
            return set()
        table = node_table_name(label)
        conn = self._connection()
        if len(wanted) > IN_LIMIT:
            return wanted & {r[0] for r in conn.execute(f"SELECT id FROM {table}")}
        return self._present(conn, table, wanted)

    def node_table(self, label: str) -> pd.DataFrame:
        with self._snapshot() as conn:
            return self._frame(conn, node_table_name(label), ["id"])

    def rel_table(self, rel: RelType) -> pd.DataFrame:
        with self._snapshot() as conn:
            return self._frame(conn, rel_table_name(rel.name), list(ENDPOINT_COLUMNS))

    def tables(self) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
        with self._snapshot():  # one consistent snapshot for the export
            return super().tables()

    def get_node(self, label: str, node_id: str) -> dict[str, Scalar] | None:
        table = node_table_name(label)
        with self._snapshot() as conn:
            dtypes = self._columns(conn, table)
            row = conn.execute(
                f"SELECT {', '.join(map(_quote, ['id', *dtypes]))} FROM {table} WHERE id=?",
                (str(node_id),)).fetchone()
        if row is None:
            return None
        out: dict[str, Scalar] = {"id": row[0]}
        for (column, dtype), value in zip(dtypes.items(), row[1:]):
            if value is not None:
                out[column] = _as_python(value, dtype)
        return out

    def _adjacent(
        self, frontier: list[NodeRef], rel_types: list[str] | None
    ) -> list[tuple[NodeRef, str, NodeRef]]:
        out: list[tuple[NodeRef, str, NodeRef]] = []
        conn = self._connection()
        for name, rel in REL_TYPES.items():
            if rel_types is not None and name not in rel_types:
                continue
            table = rel_table_name(name)
            for here, there, here_label, there_label in (
                ("source", "target", rel.source, rel.target),
                ("target", "source", rel.target, rel.source),
            ):
                ids = sorted({i for label, i in frontier if label == here_label})
                for start in range(0, len(ids), 900):
                    chunk = ids[start:start + 900]
                    rows = conn.execute(
                        f"SELECT {here}, {there} FROM {table} "
                        f"WHERE {here} IN ({', '.join('?' * len(chunk))})", chunk)
                    out.extend(((here_label, a), name, (there_label, b)) for a, b in rows)
        return out

    def _interaction_rows(
        self, user_id: str | None, product_id: str | None, kind: str | None
    ) -> pd.DataFrame:
        conditions, params = [], []
        for column, value in (("source", user_id), ("target", product_id), ("key", kind)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._snapshot() as conn:
            return self._frame(conn, rel_table_name(INTERACTED.name), list(ENDPOINT_COLUMNS),
                               where, params)

    def counts(self) -> dict[str, dict[str, int]]:
        with self._snapshot() as conn:
            nodes = {lb: conn.execute(f"SELECT count(*) FROM {node_table_name(lb)}").fetchone()[0]
                     for lb in NODE_LABELS}
            rels = {name: conn.execute(f"SELECT count(*) FROM {rel_table_name(name)}"
                                       ).fetchone()[0] for name in REL_TYPES}
        return {"nodes": nodes, "relationships": rels}

    # ---- deletes --------------------------------------------------------------------------
    def delete_nodes(self, label: str, ids: Iterable[str]) -> int:
        doomed = sorted({str(i) for i in ids})
        if not doomed:
            return 0
        deleted = 0
        with self._transaction() as conn:
            for start in range(0, len(doomed), 900):
                chunk = doomed[start:start + 900]
                marks = ", ".join("?" * len(chunk))
                for name, rel in REL_TYPES.items():
                    for column, end in (("source", rel.source), ("target", rel.target)):
                        if end == label:
                            conn.execute(f"DELETE FROM {rel_table_name(name)} "
                                         f"WHERE {column} IN ({marks})", chunk)
                deleted += conn.execute(f"DELETE FROM {node_table_name(label)} "
                                        f"WHERE id IN ({marks})", chunk).rowcount
            self._bump_generation(conn)
        self._graph = None
        return deleted

    def delete_relationships(self, rel: RelType, keys: Iterable[tuple[str, str, str]]) -> int:
        rows = [tuple(map(str, k)) for k in keys]
        if not rows:
            return 0
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(f"DELETE FROM {rel_table_name(rel.name)} "
                             "WHERE source=? AND target=? AND key=?", rows)
            deleted = conn.total_changes - before
            self._bump_generation(conn)
        self._graph = None
        return deleted

    def clear(self) -> None:
        with self._transaction() as conn:
            for label in NODE_LABELS:
                conn.execute(f"DELETE FROM {node_table_name(label)}")
            for name in REL_TYPES:
                conn.execute(f"DELETE FROM {rel_table_name(name)}")
            conn.execute("DELETE FROM event_log")
            self._bump_generation(conn)
        self._graph = None

    # ---- live events ----------------------------------------------------------------------
    def record_interactions(self, events: Sequence[InteractionEvent]
                            ) -> list[RecordedInteraction]:
        if not events:
            return []
        edges_table = rel_table_name(INTERACTED.name)
        with self._transaction() as conn:
            products = self._present(conn, node_table_name(PRODUCT),
                                     {e.product_id for e in events})
            users = self._present(conn, node_table_name(USER), {e.user_id for e in events})
            logged = self._logged(conn, {e.event_id for e in events if e.event_id})
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM event_log").fetchone()[0]
            plan: list[tuple[InteractionEvent, str, int, bool]] = []  # event, status, seq, new
            for event in events:
                if event.event_id is not None and event.event_id in logged:
                    plan.append((event, "duplicate", logged[event.event_id], False))
                    continue
                if event.product_id not in products:
                    plan.append((event, "unknown_product", 0, False))
                    continue
                last += 1
                if event.event_id is not None:
                    logged[event.event_id] = last
                new_user = event.user_id not in users
                users.add(event.user_id)
                plan.append((event, "recorded", last, new_user))
            conn.executemany(f"INSERT OR IGNORE INTO {node_table_name(USER)} (id) VALUES (?)",
                             [(e.user_id,) for e, status, _, new in plan if new])
            conn.executemany(
                "INSERT INTO event_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(seq, e.event_id, e.user_id, e.product_id, e.kind, int(e.ts), float(e.weight))
                 for e, status, seq, _ in plan if status == "recorded"])
            states = self._add_to_edges(conn, edges_table, plan)
            if any(status == "recorded" for _, status, _, _ in plan):
                self._bump_generation(conn)
        self._graph = None
        results = []
        for (event, status, seq, new_user), state in zip(plan, states):
            if state is None:
                results.append(RecordedInteraction(event, status))
                continue
            count, weight = state
            results.append(RecordedInteraction(event, status, count, weight, new_user, seq))
        return results

    @staticmethod
    def _add_to_edges(conn: sqlite3.Connection, table: str,
                      plan: list[tuple[InteractionEvent, str, int, bool]]
                      ) -> list[tuple[int, float] | None]:
        """Apply the recorded events, one upsert per edge (RETURNING its new state), and
        work back to the edge's (count, weight) as each event left it (a duplicate: as it
        stood at that point)."""
        totals: dict[tuple[str, str, str], list[Any]] = {}  # edge -> [n, weight, latest ts]
        for event, status, _, _ in plan:
            if status == "recorded":
                total = totals.setdefault((event.user_id, event.product_id, event.kind),
                                          [0, 0.0, 0])
                total[0] += 1
                total[1] += float(event.weight)
                total[2] = max(total[2], int(event.ts))
        state: dict[tuple[str, str, str], tuple[int, float]] = {}
        for key, (n, weight, ts) in totals.items():
            count, total_weight = conn.execute(
                f'INSERT INTO {table} (source, target, key, kind, "count", weight, ts) '
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, target, key) DO UPDATE SET "
                '"count" = coalesce("count", 1) + excluded."count", '
                "weight = coalesce(weight, 1.0) + excluded.weight, "
                "ts = max(coalesce(ts, 0), excluded.ts) "
                'RETURNING "count", weight', (*key, key[2], n, weight, ts)).fetchone()
            state[key] = (int(count), float(total_weight))
        for event, status, _, _ in plan:
            key = (event.user_id, event.product_id, event.kind)
            if status == "duplicate" and key not in state:
                row = conn.execute(f'SELECT "count", weight FROM {table} '
                                   "WHERE source=? AND target=? AND key=?", key).fetchone()
                state[key] = (0, 0.0) if row is None else (int(row[0] or 1),
                                                           float(row[1] or 1.0))
        states: list[tuple[int, float] | None] = [None] * len(plan)
        for position in range(len(plan) - 1, -1, -1):  # newest first: undo one at a time
            event, status, _, _ = plan[position]
            if status == "unknown_product":
                continue
            key = (event.user_id, event.product_id, event.kind)
            states[position] = state[key]
            if status == "recorded":
                count, weight = state[key]
                state[key] = (count - 1, weight - float(event.weight))
        return states

    @staticmethod
    def _present(conn: sqlite3.Connection, table: str, ids: set[str]) -> set[str]:
        ordered = sorted(ids)
        found: set[str] = set()
        for start in range(0, len(ordered), 900):
            chunk = ordered[start:start + 900]
            found.update(r[0] for r in conn.execute(
                f"SELECT id FROM {table} WHERE id IN ({', '.join('?' * len(chunk))})", chunk))
        return found

    @staticmethod
    def _logged(conn: sqlite3.Connection, event_ids: set[str]) -> dict[str, int]:
        ordered = sorted(event_ids)
        found: dict[str, int] = {}
        for start in range(0, len(ordered), 900):
            chunk = ordered[start:start + 900]
            found.update(conn.execute(
                f"SELECT event_id, seq FROM event_log "
                f"WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk).fetchall())
        return found

    def events_since(self, seq: int, limit: int = 10_000) -> list[LoggedEvent]:
        rows = self._connection().execute(
            "SELECT seq, event_id, user_id, product_id, kind, ts, weight FROM event_log "
            "WHERE seq > ? ORDER BY seq LIMIT ?", (int(seq), int(limit))).fetchall()
        return [LoggedEvent(s, InteractionEvent(u, p, k, int(t), float(w), e))
                for s, e, u, p, k, t, w in rows]

    def latest_event_seq(self) -> int:
        return int(self._connection().execute(
            "SELECT coalesce(max(seq), 0) FROM event_log").fetchone()[0])

    # ---- networkx view --------------------------------------------------------------------
    def graph(self) -> nx.MultiDiGraph:
        """The whole store as a networkx MultiDiGraph keyed by (label, id); rebuilt only
        after a write. Edge keys are `TYPE` or `TYPE:key`; every edge carries `type`."""
        with self._snapshot() as conn:
            generation = int(conn.execute(
                "SELECT value FROM meta WHERE key='generation'").fetchone()[0])
            cached = self._graph
            if cached is not None and cached[0] == generation:
                return cached[1]
            graph = nx.MultiDiGraph()
            for label in NODE_LABELS:
                graph.add_nodes_from((label, i) for (i,) in
                                     conn.execute(f"SELECT id FROM {node_table_name(label)}"))
            for name, rel in REL_TYPES.items():
                graph.add_edges_from(
                    ((rel.source, s), (rel.target, t), f"{name}:{k}" if k else name,
                     {"type": name})
                    for s, t, k in conn.execute(
                        f"SELECT source, target, key FROM {rel_table_name(name)}"))
        self._graph = (generation, graph)
        return graph

    # ---- migration from the Parquet store -------------------------------------------------
    def _migrate_parquet(self) -> None:
        """Load the old store's current version in one transaction, then remove its files.

        The transaction also records the migrated version, so a crash between the commit and
        the clean-up is finished on the next open; data of both kinds is refused."""
        version = (self.directory / "CURRENT").read_text().strip()
        conn = self._connection()
        done = conn.execute("SELECT value FROM meta WHERE key='migrated_from'").fetchone()
        if done is None and sum(self.counts()["nodes"].values()):
            raise RuntimeError(
                f"{self.directory}: holds both an SQLite graph ({DATABASE}) and the old "
                "Parquet store (CURRENT); remove one of them (the old files after checking "
                f"that {DATABASE} has your data)")
        if done is None:
            self._load_parquet_version(version)
        for stale in self.directory.iterdir():
            if stale.name in (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm"):
                continue
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()

    def _load_parquet_version(self, version: str) -> None:
        version_dir = self.directory / version
        manifest_path = version_dir / "manifest.json"
        if not manifest_path.exists():
            raise RuntimeError(f"{self.directory}: CURRENT names {version!r}, which has no "
                               "manifest.json; the old store is damaged, not migrated")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != 1:
            raise RuntimeError(f"{version_dir}: unsupported store format "
                               f"{manifest.get('format')!r}, not migrated")
        batch = GraphBatch()
        for label in manifest["nodes"]:
            frame = pd.read_parquet(version_dir / "nodes" / f"{label}.parquet")
            batch.add_nodes(label, frame)
        for name in manifest["relationships"]:
            rel = REL_TYPES[name]
            frame = pd.read_parquet(version_dir / "rels" / f"{name}.parquet")
            if rel.key:
                frame = frame.assign(**{rel.key: frame["key"]})
            batch.add_rels(rel, frame)
        with self._transaction() as conn:
            self._write_in(conn, batch, progress=True)
            conn.execute("INSERT INTO meta VALUES ('migrated_from', ?)", (version,))


def _as_dtype(series: pd.Series, dtype: str) -> pd.Series:
    if dtype == "object":
        return series.astype(object).where(series.notna(), None)
    if dtype == "boolean":
        return series.map(lambda v: None if v is None or v != v else bool(v)).astype("boolean")
    return pd.to_numeric(series, errors="coerce").astype(dtype)


def _as_python(value: Any, dtype: str) -> Scalar:
    if dtype == "boolean":
        return bool(value)
    if dtype == "Float64":
        return float(value)
    return value


__all__ = ["EmbeddedStore", "row_props"]
