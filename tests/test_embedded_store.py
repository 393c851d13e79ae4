"""The embedded (SQLite) store against the shared conformance suite, plus what only it
promises: persistence, all-or-nothing loads, migration of the old Parquet layout."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

import kg
from kg.embedded import DATABASE, EmbeddedStore
from kg.schema import GraphBatch
from tests.event_conformance import EventConformance
from tests.store_conformance import (
    EXPECTED_NODES,
    EXPECTED_RELS,
    StoreConformance,
    sample_batch,
    snapshot,
)


class TestEmbeddedStore(StoreConformance, EventConformance):
    @pytest.fixture
    def store(self, tmp_path) -> EmbeddedStore:
        with EmbeddedStore(tmp_path / "graph") as store:
            yield store


def test_persists_across_instances(tmp_path) -> None:
    first = EmbeddedStore(tmp_path / "graph")
    first.load(sample_batch())
    again = EmbeddedStore(tmp_path / "graph")
    assert again.counts()["nodes"] == EXPECTED_NODES
    assert snapshot(again) == snapshot(first)


def test_failure_mid_load_keeps_old_state(tmp_path, monkeypatch) -> None:
    store = EmbeddedStore(tmp_path / "graph")
    store.load(sample_batch())
    before = snapshot(store)
    b = GraphBatch()
    b.add_node(kg.PRODUCT, "p9", {"title": "never stored"})
    b.add_node(kg.BRAND, "b9", {"name": "never stored either"})
    b.add_rel(kg.MADE_BY, "p9", "b9")
    real = EmbeddedStore._upsert
    calls = []

    def fail_on_second_table(self, conn, table, frame, keys, bar):
        calls.append(table)
        if len(calls) == 2:
            raise OSError("disk full")  # the Product rows are already inserted by now
        return real(self, conn, table, frame, keys, bar)

    monkeypatch.setattr(EmbeddedStore, "_upsert", fail_on_second_table)
    with pytest.raises(OSError):
        store.load(b)
    monkeypatch.undo()
    assert snapshot(store) == before
    assert snapshot(EmbeddedStore(tmp_path / "graph")) == before


def test_types_round_trip(tmp_path) -> None:
    store = EmbeddedStore(tmp_path / "graph")
    b = GraphBatch()
    b.add_nodes(kg.PRODUCT, pd.DataFrame({
        "id": ["a", "b"], "price": [2.0, 5.0], "stock": pd.array([3, None], dtype="Int64"),
        "in_stock": [True, False], "title": ["12", None]}))
    store.load(b)
    assert store.get_node(kg.PRODUCT, "a") == {"id": "a", "price": 2.0, "stock": 3,
                                               "in_stock": True, "title": "12"}
    table = store.node_table(kg.PRODUCT)
    assert str(table["price"].dtype) == "Float64" and str(table["stock"].dtype) == "Int64"
    assert str(table["in_stock"].dtype) == "boolean" and table["title"].iloc[0] == "12"
    assert pd.isna(table["stock"].iloc[1])


def test_readers_see_the_old_state_during_a_write(tmp_path) -> None:
    store = EmbeddedStore(tmp_path / "graph")
    store.load(sample_batch())
    other = EmbeddedStore(tmp_path / "graph")
    with store._transaction() as conn:  # a write in flight, not committed yet
        conn.execute("DELETE FROM n_Product")
        assert other.counts()["nodes"]["Product"] == 3
    assert other.counts()["nodes"]["Product"] == 0


def test_networkx_view(tmp_path) -> None:
    store = EmbeddedStore(tmp_path / "graph")
    store.load(sample_batch())
    graph = store.graph()
    assert graph.number_of_nodes() == sum(EXPECTED_NODES.values())
    assert graph.number_of_edges() == 17
    assert graph.has_edge(("User", "u1"), ("Product", "p1"), key="INTERACTED:view")
    assert store.graph() is graph  # cached until the next write
    store.delete_nodes(kg.PRODUCT, ["p3"])
    assert store.graph().number_of_nodes() == sum(EXPECTED_NODES.values()) - 1


def write_parquet_store(directory, batch: GraphBatch) -> None:
    """The layout of the Parquet store (format 1) that earlier shopgraph versions wrote."""
    version = directory / "v-0123456789ab"
    (version / "nodes").mkdir(parents=True)
    (version / "rels").mkdir()
    for label in batch.labels:
        batch.node_frame(label).to_parquet(version / "nodes" / f"{label}.parquet", index=False)
    for rel in batch.rel_types:
        batch.rel_frame(rel).to_parquet(version / "rels" / f"{rel.name}.parquet", index=False)
    manifest = {"format": 1, "nodes": batch.labels,
                "relationships": [r.name for r in batch.rel_types]}
    (version / "manifest.json").write_text(json.dumps(manifest))
    (directory / "CURRENT").write_text(version.name)


def test_migrates_a_parquet_workspace(tmp_path) -> None:
    expected = EmbeddedStore(tmp_path / "fresh")
    expected.load(sample_batch())
    old = tmp_path / "graph"
    old.mkdir()
    write_parquet_store(old, sample_batch())
    migrated = EmbeddedStore(old)
    assert migrated.counts()["relationships"] == EXPECTED_RELS
    assert snapshot(migrated) == snapshot(expected)
    assert sorted(p.name for p in old.iterdir() if not p.name.startswith(DATABASE)) == []
    assert snapshot(EmbeddedStore(old)) == snapshot(expected)  # reopening changes nothing


def test_refuses_a_damaged_or_mixed_workspace(tmp_path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "CURRENT").write_text("v-missing")
    with pytest.raises(RuntimeError, match="no manifest.json"):
        EmbeddedStore(damaged)
    mixed = tmp_path / "mixed"
    EmbeddedStore(mixed).load(sample_batch())
    write_parquet_store(mixed, sample_batch())
    with pytest.raises(RuntimeError, match="both an SQLite graph"):
        EmbeddedStore(mixed)


def test_refuses_a_newer_format(tmp_path) -> None:
    EmbeddedStore(tmp_path / "graph").close()
    with sqlite3.connect(tmp_path / "graph" / DATABASE) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='format'")
    with pytest.raises(RuntimeError, match="store format 99"):
        EmbeddedStore(tmp_path / "graph")
