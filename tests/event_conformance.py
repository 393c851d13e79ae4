"""Live-event behaviour every `GraphStore` must show (embedded and Neo4j alike).

Mixed into each store's conformance test class beside `StoreConformance`; uses its `loaded`
fixture (the sample graph: u1 bought p1 twice and viewed p1 and p2, u2 bought p3).
"""

from __future__ import annotations

import threading

import pytest

import kg
from kg.store import GraphStore, InteractionEvent


def event(user: str, product: str, kind: str = "view", ts: int = 1_000,
          event_id: str | None = None, weight: float = 1.0) -> InteractionEvent:
    return InteractionEvent(user, product, kind, ts, weight, event_id)


class EventConformance:
    """`record_interactions`, `record_events` (group commit) and `events_since`."""

    def test_events_grow_edges_and_create_users(self, loaded: GraphStore) -> None:
        results = loaded.record_interactions([
            event("u1", "p1", "view", ts=500),     # existing edge: count 1 -> 2
            event("u1", "p1", "view", ts=400),     # again in the same group: 3, ts stays 500
            event("new", "p2", "cart", ts=600),    # a new user and a new edge
            event("new", "p3", "cart", ts=700),    # the user exists by now
            event("u1", "nope", "view"),           # an unknown product writes nothing
        ])
        assert [r.status for r in results] == ["recorded"] * 4 + ["unknown_product"]
        assert [(r.count, r.weight) for r in results[:4]] == [
            (2, 2.0), (3, 3.0), (1, 1.0), (1, 1.0)]
        assert [r.new_user for r in results[:4]] == [False, False, True, False]
        seqs = [r.seq for r in results[:4]]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        row = loaded.interactions("u1", "p1", "view").iloc[0]
        assert (int(row["count"]), float(row["weight"]), int(row["ts"])) == (3, 3.0, 500)
        assert loaded.get_node(kg.USER, "new") == {"id": "new"}
        assert loaded.counts()["relationships"]["INTERACTED"] == 6
        assert loaded.counts()["nodes"]["User"] == 3

    def test_event_ids_make_retries_harmless(self, loaded: GraphStore) -> None:
        first = loaded.record_interactions([event("u2", "p1", event_id="e-1"),
                                            event("u2", "p1", event_id="e-1")])
        assert [r.status for r in first] == ["recorded", "duplicate"]
        again = loaded.record_interactions([event("u2", "p1", event_id="e-1"),
                                            event("u2", "p1", event_id="e-2")])
        assert [r.status for r in again] == ["duplicate", "recorded"]
        assert again[0].seq == first[0].seq and again[0].count == 1  # as it stood then
        assert again[1].count == 2
        assert int(loaded.interactions("u2", "p1", "view")["count"].iloc[0]) == 2

    def test_event_log_pages_in_order(self, loaded: GraphStore) -> None:
        start = max([e.seq for e in loaded.events_since(0)], default=0)
        loaded.record_interactions([event("u1", "p2", ts=t) for t in range(5)])
        logged = loaded.events_since(start)
        assert [e.event.ts for e in logged] == list(range(5))
        assert loaded.events_since(logged[1].seq, limit=2) == logged[2:4]
        assert loaded.events_since(logged[-1].seq) == []
        assert logged[0].event == event("u1", "p2", ts=0)

    def test_latest_event_seq_is_the_newest_logged(self, loaded: GraphStore) -> None:
        before = loaded.latest_event_seq()
        assert before == max([e.seq for e in loaded.events_since(0)], default=0)
        results = loaded.record_interactions([event("u1", "p2", ts=t) for t in range(3)])
        assert loaded.latest_event_seq() == results[-1].seq > before
        loaded.record_interactions([event("u1", "nope")])  # nothing logged
        assert loaded.latest_event_seq() == results[-1].seq

    def test_concurrent_writers_all_land(self, loaded: GraphStore) -> None:
        def post(thread: int) -> None:
            for i in range(25):
                loaded.record_events([event(f"w{thread}", "p1", ts=i)])

        threads = [threading.Thread(target=post, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = loaded.interactions(product_id="p1", kind="view")
        counts = {r.user_id: int(r.count) for r in rows.itertuples() if r.user_id[0] == "w"}
        assert counts == {f"w{t}": 25 for t in range(8)}
        seqs = [e.seq for e in loaded.events_since(0)]
        assert len(seqs) == len(set(seqs)) == 200

    def test_group_commit_passes_errors_to_callers(self, loaded: GraphStore) -> None:
        loaded.close()  # nothing can be written through a closed store
        with pytest.raises(Exception):  # noqa: B017 - each store has its own closed error
            loaded.record_events([event("u1", "p1")])
