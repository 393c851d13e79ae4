"""The conformance suite every `GraphStore` must pass (embedded and Neo4j alike).

A test module subclasses `StoreConformance` and provides a `store` fixture yielding an empty
store. Tests compare against the small hand-written graph in `sample_batch()`, whose expected
shape is spelled out next to it, so a store that drops or duplicates anything fails.
"""

from __future__ import annotations

import pandas as pd
import pytest

import kg
from kg.export import edge_type, export_graph
from kg.schema import DataError, GraphBatch
from kg.store import GraphStore

# 3 products, 2 brands, a 2-level category tree (3 nodes), 2 attributes, 2 users,
# 4 interactions (u1 bought p1 and viewed p1 and p2; u2 bought p3), 2 entities and a triple.
EXPECTED_NODES = {"Product": 3, "Brand": 2, "Category": 3, "User": 2, "Attribute": 2,
                  "Entity": 2}
EXPECTED_RELS = {"MADE_BY": 3, "IN_CATEGORY": 3, "SUBCATEGORY_OF": 2, "HAS_ATTRIBUTE": 3,
                 "INTERACTED": 4, "SAME_AS": 1, "REL": 1}


def sample_batch() -> GraphBatch:
    """A catalog small enough to reason about by hand, touching every label and type."""
    b = GraphBatch()
    b.add_node(kg.PRODUCT, "p1", {"title": "Red summer dress", "price": 19.5})
    b.add_node(kg.PRODUCT, "p2", {"title": "Black running shoes", "price": 49.0})
    b.add_node(kg.PRODUCT, "p3", {"title": "Blue jeans"})
    b.add_node(kg.BRAND, "acme", {"name": "Acme"})
    b.add_node(kg.BRAND, "zed", {"name": "Zed"})
    b.add_node(kg.CATEGORY, "Apparel", {"name": "Apparel", "level": 0})
    b.add_node(kg.CATEGORY, "Apparel > Dresses", {"name": "Dresses", "level": 1})
    b.add_node(kg.CATEGORY, "Apparel > Shoes", {"name": "Shoes", "level": 1})
    b.add_node(kg.ATTRIBUTE, "colour=Red", {"kind": "colour", "value": "Red"})
    b.add_node(kg.ATTRIBUTE, "colour=Black", {"kind": "colour", "value": "Black"})
    b.add_node(kg.USER, "u1", {"age": "25-34"})
    b.add_node(kg.USER, "u2")
    b.add_node(kg.ENTITY, "m.1")
    b.add_node(kg.ENTITY, "m.2")
    for product, brand in (("p1", "acme"), ("p2", "acme"), ("p3", "zed")):
        b.add_rel(kg.MADE_BY, product, brand)
    b.add_rel(kg.IN_CATEGORY, "p1", "Apparel > Dresses")
    b.add_rel(kg.IN_CATEGORY, "p2", "Apparel > Shoes")
    b.add_rel(kg.IN_CATEGORY, "p3", "Apparel")
    b.add_rel(kg.SUBCATEGORY_OF, "Apparel > Dresses", "Apparel")
    b.add_rel(kg.SUBCATEGORY_OF, "Apparel > Shoes", "Apparel")
    b.add_rel(kg.HAS_ATTRIBUTE, "p1", "colour=Red")
    b.add_rel(kg.HAS_ATTRIBUTE, "p2", "colour=Black")
    b.add_rel(kg.HAS_ATTRIBUTE, "p3", "colour=Black")
    b.add_rel(kg.INTERACTED, "u1", "p1", {"kind": "purchase", "weight": 2.0, "ts": 200, "count": 2})
    b.add_rel(kg.INTERACTED, "u1", "p1", {"kind": "view", "weight": 1.0, "ts": 100, "count": 1})
    b.add_rel(kg.INTERACTED, "u1", "p2", {"kind": "view", "weight": 1.0, "ts": 150, "count": 1})
    b.add_rel(kg.INTERACTED, "u2", "p3", {"kind": "purchase", "weight": 3.0, "ts": 300, "count": 3})
    b.add_rel(kg.SAME_AS, "p1", "m.1")
    b.add_rel(kg.REL, "m.1", "m.2", {"type": "film.film.genre"})
    return b


def canonical(frame: pd.DataFrame) -> list[tuple]:
    """Rows as sorted tuples of (column, value) without nulls: order- and dtype-insensitive."""
    rows = []
    for record in frame.to_dict("records"):
        rows.append(tuple(sorted(
            (k, float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in record.items() if not pd.isna(v)
        )))
    return sorted(rows)


def snapshot(store: GraphStore) -> list[list[tuple]]:
    nodes, rels = store.tables()
    return [canonical(nodes[k]) for k in sorted(nodes)] + [canonical(rels[k]) for k in sorted(rels)]


class StoreConformance:
    """Behaviour every GraphStore implementation must show."""

    @pytest.fixture
    def store(self) -> GraphStore:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def loaded(self, store: GraphStore) -> GraphStore:
        store.load(sample_batch())
        return store

    def test_starts_empty(self, store: GraphStore) -> None:
        counts = store.counts()
        assert set(counts["nodes"]) == set(kg.NODE_LABELS)
        assert set(counts["relationships"]) == set(kg.REL_TYPES)
        assert sum(counts["nodes"].values()) == 0

    def test_create_counts_and_properties(self, loaded: GraphStore) -> None:
        counts = loaded.counts()
        assert counts["nodes"] == EXPECTED_NODES
        assert counts["relationships"] == EXPECTED_RELS
        assert loaded.get_node(kg.PRODUCT, "p1") == {
            "id": "p1", "title": "Red summer dress", "price": 19.5}
        assert loaded.get_node(kg.CATEGORY, "Apparel > Shoes")["level"] == 1
        assert loaded.get_node(kg.PRODUCT, "nope") is None

    def test_reload_is_idempotent(self, loaded: GraphStore) -> None:
        before = snapshot(loaded)
        report = loaded.load(sample_batch())
        assert report.relationships["INTERACTED"] == 4
        assert loaded.counts()["nodes"] == EXPECTED_NODES
        assert loaded.counts()["relationships"] == EXPECTED_RELS
        assert snapshot(loaded) == before

    def test_upsert_updates_and_keeps_properties(self, loaded: GraphStore) -> None:
        b = GraphBatch()
        b.add_node(kg.PRODUCT, "p1", {"price": 17.0, "stock": 4})
        b.add_rel(kg.INTERACTED, "u2", "p3", {"kind": "purchase", "count": 4, "weight": 4.0})
        loaded.load(b)
        assert loaded.get_node(kg.PRODUCT, "p1") == {
            "id": "p1", "title": "Red summer dress", "price": 17.0, "stock": 4}
        row = loaded.interactions(user_id="u2").iloc[0]
        assert (row["count"], row["weight"], row["ts"]) == (4, 4.0, 300)
        assert loaded.counts()["relationships"]["INTERACTED"] == 4

    def test_existing_ids(self, loaded: GraphStore) -> None:
        assert loaded.existing_ids(kg.PRODUCT, ["p1", "p3", "p9"]) == {"p1", "p3"}
        assert loaded.existing_ids(kg.USER, []) == set()

    def test_bad_load_leaves_store_unchanged(self, loaded: GraphStore) -> None:
        before = snapshot(loaded)
        b = GraphBatch()
        b.add_node(kg.PRODUCT, "p4", {"title": "new"})
        b.add_rel(kg.INTERACTED, "u1", "p4", {"kind": "view"}, origin=("events.csv", 7))
        b.add_rel(kg.INTERACTED, "ghost", "p1", {"kind": "view"}, origin=("events.csv", 9))
        with pytest.raises(DataError) as err:
            loaded.load(b)
        assert (err.value.file, err.value.line, err.value.field) == ("events.csv", 9, "user_id")
        assert "ghost" in str(err.value)
        assert snapshot(loaded) == before

    def test_relationships_may_point_at_stored_nodes(self, loaded: GraphStore) -> None:
        b = GraphBatch()
        b.add_rel(kg.INTERACTED, "u2", "p1", {"kind": "cart", "ts": 400})
        loaded.load(b)
        assert loaded.counts()["relationships"]["INTERACTED"] == 5

    def test_neighbours_depth_one(self, loaded: GraphStore) -> None:
        found = {(n.label, n.id, n.via) for n in loaded.neighbours(kg.PRODUCT, "p1")}
        assert found == {
            ("Brand", "acme", "MADE_BY"), ("Category", "Apparel > Dresses", "IN_CATEGORY"),
            ("Attribute", "colour=Red", "HAS_ATTRIBUTE"), ("User", "u1", "INTERACTED"),
            ("Entity", "m.1", "SAME_AS"),
        }

    def test_neighbours_depth_two_filters_and_limit(self, loaded: GraphStore) -> None:
        near = loaded.neighbours(kg.PRODUCT, "p1", depth=2, rel_types=["MADE_BY"])
        assert [(n.label, n.id, n.distance) for n in near] == [
            ("Brand", "acme", 1), ("Product", "p2", 2)]
        assert near[1].props["title"] == "Black running shoes"
        both = loaded.neighbours(kg.USER, "u1", depth=2, rel_types=["INTERACTED", "MADE_BY"])
        assert [(n.id, n.distance) for n in both] == [("p1", 1), ("p2", 1), ("acme", 2)]
        assert len(loaded.neighbours(kg.PRODUCT, "p1", depth=3, limit=2)) == 2

    def test_neighbours_bad_requests(self, loaded: GraphStore) -> None:
        with pytest.raises(KeyError):
            loaded.neighbours(kg.PRODUCT, "missing")
        with pytest.raises(ValueError):
            loaded.neighbours(kg.PRODUCT, "p1", depth=0)
        with pytest.raises(ValueError):
            loaded.neighbours("Nope", "p1")
        with pytest.raises(ValueError):
            loaded.neighbours(kg.PRODUCT, "p1", rel_types=["LIKES"])

    def test_interaction_queries(self, loaded: GraphStore) -> None:
        everything = loaded.interactions()
        assert len(everything) == 4
        assert {"user_id", "product_id", "kind", "weight", "ts", "count"} <= set(
            everything.columns)
        u1 = loaded.interactions(user_id="u1")
        assert list(zip(u1["product_id"], u1["kind"])) == [
            ("p1", "purchase"), ("p1", "view"), ("p2", "view")]
        p3 = loaded.interactions(product_id="p3")
        assert list(p3["user_id"]) == ["u2"] and float(p3["weight"].iloc[0]) == 3.0
        assert len(loaded.interactions(kind="purchase")) == 2
        assert loaded.interactions(user_id="nobody").empty

    def test_delete_nodes_detaches(self, loaded: GraphStore) -> None:
        assert loaded.delete_nodes(kg.PRODUCT, ["p1", "absent"]) == 1
        counts = loaded.counts()
        assert counts["nodes"]["Product"] == 2
        rels = counts["relationships"]
        assert (rels["MADE_BY"], rels["INTERACTED"], rels["SAME_AS"]) == (2, 2, 0)
        assert loaded.get_node(kg.PRODUCT, "p1") is None

    def test_delete_relationships(self, loaded: GraphStore) -> None:
        removed = loaded.delete_relationships(kg.INTERACTED, [("u1", "p1", "view"),
                                                              ("u1", "p3", "view")])
        assert removed == 1
        assert list(loaded.interactions(user_id="u1")["kind"]) == ["purchase", "view"]

    def test_export_agrees_with_graph(self, loaded: GraphStore) -> None:
        snap = export_graph(loaded)
        assert snap.ids["Product"] == ["p1", "p2", "p3"]
        assert snap.ids["User"] == ["u1", "u2"]
        matrix = snap.interaction_matrix()
        assert matrix.shape == (2, 3)
        assert matrix.toarray().tolist() == [[3.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
        assert snap.interaction_matrix(kinds=["purchase"]).toarray().tolist() == [
            [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
        data = snap.to_hetero_data()
        assert data["product"].num_nodes == 3 and data["product"].ids == ["p1", "p2", "p3"]
        inter = data[edge_type("INTERACTED")]
        assert inter.edge_index.shape == (2, 4)
        pairs = {(snap.ids["User"][u], snap.ids["Product"][p])
                 for u, p in inter.edge_index.t().tolist()}
        assert pairs == {("u1", "p1"), ("u1", "p2"), ("u2", "p3")}
        assert sorted(inter.edge_weight.tolist()) == [1.0, 1.0, 2.0, 3.0]
        made_by = data[edge_type("MADE_BY")].edge_index.t().tolist()
        assert sorted((snap.ids["Product"][p], snap.ids["Brand"][b]) for p, b in made_by) == [
            ("p1", "acme"), ("p2", "acme"), ("p3", "zed")]
        assert data[edge_type("REL")].relations == ["film.film.genre"]

    def test_clear(self, loaded: GraphStore) -> None:
        loaded.clear()
        assert sum(loaded.counts()["nodes"].values()) == 0
        assert sum(loaded.counts()["relationships"].values()) == 0
