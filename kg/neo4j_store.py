"""`Neo4jStore`: the product graph in Neo4j over Bolt with the official driver.

All values travel as query parameters; the only text put into Cypher is a label or
relationship type taken from the fixed schema (Cypher cannot parameterize those). Writes are
batched `UNWIND $rows ... MERGE` in managed transactions, which the driver retries on transient
errors (deadlocks, leader changes, dropped connections).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
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
from kg.store import GraphStore, NodeRef, row_props

BATCH_ROWS = 10_000


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


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _rows(frame: pd.DataFrame, skip: Iterable[str]) -> list[dict[str, Any]]:
    """DataFrame rows as property maps without nulls (Neo4j stores no nulls)."""
    return [row_props(r, skip) for r in frame.to_dict("records")]


def _label(label: str) -> str:
    if label not in NODE_LABELS:
        raise ValueError(f"unknown label {label!r}")
    return label


class Neo4jStore(GraphStore):
    """A graph store in a Neo4j 5 database; creates its constraints on first use."""

    name = "neo4j"

    def __init__(self, settings: Neo4jSettings | None = None, batch_rows: int = BATCH_ROWS) -> None:
        import neo4j  # imported here so `kg` stays importable without a driver configured

        self.settings = settings or Neo4jSettings.from_env()
        self.batch_rows = batch_rows
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
        """Uniqueness constraints (which also index `id`) for every label; idempotent."""
        for label in NODE_LABELS:
            self._write_tx(
                f"CREATE CONSTRAINT {label.lower()}_id IF NOT EXISTS "
                f"FOR (n:{_label(label)}) REQUIRE n.id IS UNIQUE"
            )
        self._write_tx("CALL db.awaitIndexes(300)")

    def close(self) -> None:
        self._driver.close()

    # ---- GraphStore primitives ------------------------------------------------------------
    def existing_ids(self, label: str, ids: Iterable[str]) -> set[str]:
        wanted = [str(i) for i in ids]
        found: set[str] = set()
        for chunk in _chunks([{"id": i} for i in wanted], 50_000):
            rows = self._read(
                f"UNWIND $ids AS id MATCH (n:{_label(label)} {{id: id}}) RETURN n.id AS id",
                ids=[r["id"] for r in chunk],
            )
            found.update(r["id"] for r in rows)
        return found

    def _write(self, batch: GraphBatch, progress: bool) -> None:
        total = batch.row_count()
        with tqdm(total=total, desc="neo4j: write", unit="row", disable=not progress) as bar:
            for label in batch.labels:
                query = (f"UNWIND $rows AS row MERGE (n:{_label(label)} {{id: row.id}}) "
                         "SET n += row")
                for chunk in _chunks(_rows(batch.node_frame(label), ()), self.batch_rows):
                    self._write_tx(query, rows=chunk)
                    bar.update(len(chunk))
            for rel in batch.rel_types:
                query = self._merge_rel_query(rel)
                frame = batch.rel_frame(rel)
                rows = [
                    {"s": s, "t": t, "p": p}
                    for s, t, p in zip(frame["source"], frame["target"],
                                       _rows(frame, ENDPOINT_COLUMNS))
                ]
                for chunk in _chunks(rows, self.batch_rows):
                    self._write_tx(query, rows=chunk)
                    bar.update(len(chunk))

    @staticmethod
    def _merge_rel_query(rel: RelType) -> str:
        keyed = f" {{{rel.key}: row.p.{rel.key}}}" if rel.key else ""
        return (
            f"UNWIND $rows AS row "
            f"MATCH (a:{_label(rel.source)} {{id: row.s}}) "
            f"MATCH (b:{_label(rel.target)} {{id: row.t}}) "
            f"MERGE (a)-[r:{rel.name}{keyed}]->(b) SET r += row.p"
        )

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
        while self._write_tx(
            "MATCH (n) WITH n LIMIT 20000 DETACH DELETE n RETURN count(*) AS c"
        )[0]["c"]:
            pass


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
