"""The embedded store against the shared conformance suite, plus what only it promises."""

from __future__ import annotations

import os

import pytest

import kg
from kg.embedded import EmbeddedStore
from kg.schema import GraphBatch
from tests.store_conformance import EXPECTED_NODES, StoreConformance, sample_batch, snapshot


class TestEmbeddedStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path) -> EmbeddedStore:
        return EmbeddedStore(tmp_path / "graph")


def test_persists_across_instances(tmp_path) -> None:
    first = EmbeddedStore(tmp_path / "graph")
    first.load(sample_batch())
    again = EmbeddedStore(tmp_path / "graph")
    assert again.counts()["nodes"] == EXPECTED_NODES
    assert snapshot(again) == snapshot(first)


def test_crash_before_commit_keeps_old_version(tmp_path, monkeypatch) -> None:
    store = EmbeddedStore(tmp_path / "graph")
    store.load(sample_batch())
    before = snapshot(store)

    def fail(*_args, **_kwargs):
        raise OSError("disk full")

    b = GraphBatch()
    b.add_node(kg.PRODUCT, "p9", {"title": "never stored"})
    monkeypatch.setattr(os, "replace", fail)  # the atomic flip never happens
    with pytest.raises(OSError):
        store.load(b)
    monkeypatch.undo()
    assert snapshot(store) == before
    assert snapshot(EmbeddedStore(tmp_path / "graph")) == before


def test_networkx_view(tmp_path) -> None:
    store = EmbeddedStore(tmp_path / "graph")
    store.load(sample_batch())
    graph = store.graph()
    assert graph.number_of_nodes() == sum(EXPECTED_NODES.values())
    assert graph.number_of_edges() == 17
    assert graph.has_edge(("User", "u1"), ("Product", "p1"), key="INTERACTED:view")
