"""Neo4jStore against the shared conformance suite, on a real Neo4j 5.26 server."""

from __future__ import annotations

import neo4j
import pytest

import kg
from kg.embedded import EmbeddedStore
from kg.export import export_graph
from kg.neo4j_store import Neo4jSettings, Neo4jStore
from tests.event_conformance import EventConformance
from tests.store_conformance import StoreConformance, sample_batch, snapshot

pytestmark = pytest.mark.neo4j


class TestNeo4jStore(StoreConformance, EventConformance):
    @pytest.fixture
    def store(self, neo4j_store: Neo4jStore) -> Neo4jStore:
        return neo4j_store


def test_same_graph_as_embedded(neo4j_store: Neo4jStore, tmp_path) -> None:
    embedded = EmbeddedStore(tmp_path / "graph")
    for store in (neo4j_store, embedded):
        store.load(sample_batch())
    assert snapshot(neo4j_store) == snapshot(embedded)
    a, b = export_graph(neo4j_store), export_graph(embedded)
    assert a.ids == b.ids
    assert (a.interaction_matrix() != b.interaction_matrix()).nnz == 0


def test_constraints_exist(neo4j_store: Neo4jStore) -> None:
    rows = neo4j_store._read("SHOW CONSTRAINTS YIELD labelsOrTypes, properties, type")
    unique = {r["labelsOrTypes"][0] for r in rows
              if r["type"] == "UNIQUENESS" and r["properties"] == ["id"]}
    assert unique == set(kg.NODE_LABELS)


def test_constraint_rejects_duplicate_id(neo4j_store: Neo4jStore) -> None:
    neo4j_store.load(sample_batch())
    with pytest.raises(neo4j.exceptions.ConstraintError):
        neo4j_store._write_tx("CREATE (:Product {id: 'p1'})")


def test_wrong_password_is_a_clear_error(neo4j_settings: Neo4jSettings) -> None:
    bad = Neo4jSettings(neo4j_settings.uri, neo4j_settings.user, "not-the-password")
    with pytest.raises(ConnectionError, match="cannot reach Neo4j"):
        Neo4jStore(bad)


def test_values_are_parameters_not_cypher(neo4j_store: Neo4jStore) -> None:
    b = kg.GraphBatch()
    hostile = "x'}) DETACH DELETE n //"
    b.add_node(kg.PRODUCT, hostile, {"title": "' OR 1=1 MATCH (n) DETACH DELETE n"})
    neo4j_store.load(sample_batch())
    neo4j_store.load(b)
    assert neo4j_store.get_node(kg.PRODUCT, hostile)["title"].startswith("' OR")
    assert neo4j_store.counts()["nodes"]["Product"] == 4


def test_small_batches_give_same_result(neo4j_settings: Neo4jSettings) -> None:
    store = Neo4jStore(neo4j_settings, batch_rows=2)
    store.clear()
    store.load(sample_batch())
    assert store.counts()["relationships"]["INTERACTED"] == 4
    store.close()
