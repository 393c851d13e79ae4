"""The HTTP API over a real Neo4j that is stopped mid-run and brought back.

Its own Neo4j server (the session one is shared, this one gets stopped), loaded with the small
shop graph (tests/shop_graph.py); the recommender is trained from that store (TINY config of
tests/test_service.py, without the GNN). While Neo4j is down, recommendations and related
products keep answering from the loaded artifacts and an event gets a 503 once the driver
gives up: after its 30 s retry budget plus the last jittered back-off, i.e. 30 to about 62 s.
After Neo4j is back on the same port with the same data, the same event (a client's retry)
and a new one get 201, and the store holds exactly the events answered 201, once each.
75-80 s on 2 cores (up to ~110 s when the back-off runs long), most of it the outage and
the JVM starts.

Also, without Neo4j: events stuck on an unreachable store (as they are for 30-60 s while the
driver retries) do not starve reads of threads (they run on their own, `EVENT_WRITERS`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.app import EVENT_WRITERS, create_app
from kg.embedded import EmbeddedStore
from kg.neo4j_store import Neo4jSettings, Neo4jStore
from recommender.training import HybridConfig, train_recommender
from tests.neo4j_server import Neo4jServer, neo4j_or_skip
from tests.shop_graph import PURCHASES, small_shop
from tests.test_service import TINY

API_KEY = "fault-key-7c1d"
KEY = {"X-API-Key": API_KEY}
NO_GNN = HybridConfig(**{**TINY.to_dict(), "gnn": None})
OUTAGE_DEADLINE_S = 90  # the driver gives up after 30 s of retries + one back-off (<= ~32 s)


@pytest.fixture
def own_neo4j(tmp_path: Path) -> Iterator[Neo4jServer]:
    """A private server (skipped without Java/Maven on a laptop, an error under CI=true)."""
    server = neo4j_or_skip(tmp_path / "neo4j")
    yield server
    server.stop()


def settings(server: Neo4jServer) -> Neo4jSettings:
    return Neo4jSettings(uri=server.uri, user=server.user, password=server.password)


def stored_events(store: Neo4jStore) -> dict[tuple[str, str, str], int]:
    """(user, product, kind) -> the INTERACTED edge's `count`, for every edge in the store."""
    rows = store.interactions()
    counts = rows["count"] if "count" in rows else pd.Series(1, index=rows.index)
    return {(u, p, k): 1 if pd.isna(n) else int(n)
            for u, p, k, n in zip(rows["user_id"], rows["product_id"], rows["kind"], counts)}


@pytest.mark.neo4j
def test_neo4j_stopped_mid_run(own_neo4j: Neo4jServer, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    with Neo4jStore(settings(own_neo4j)) as store:
        store.load(small_shop())
        train_recommender(store, workspace, NO_GNN, log=lambda _: None)
        before = stored_events(store)

    app_store = Neo4jStore(settings(own_neo4j))
    app = create_app(workspace, store=app_store, api_key=API_KEY, load_search=False,
                     follow_events=False)
    accepted: list[tuple[str, str, str]] = []  # events answered 201, as the client saw them

    def post(user: str, product: str, kind: str) -> httpx.Response:
        r = client.post("/events", headers=KEY,
                        json={"user_id": user, "product_id": product, "kind": kind})
        if r.status_code == 201:
            accepted.append((user, product, kind))
        return r

    try:
        with TestClient(app) as client:
            service = app.state.services.recommender.service
            recs = client.get("/users/u1/recommendations", params={"k": 3})
            assert recs.status_code == 200, recs.text
            assert post("walk-in", "p8", "view").status_code == 201

            # ---- Neo4j goes away ---------------------------------------------------------
            own_neo4j.stop(keep_data=True)
            answers: list[httpx.Response] = []
            writer = threading.Thread(
                target=lambda: answers.append(post("u1", "p6", "purchase")))
            writer.start()
            reads: list[tuple[int, float]] = []
            started = time.monotonic()
            own_neo4j.prepare_restart()  # the slow half of the restart; the port stays closed
            while writer.is_alive():
                assert time.monotonic() - started < OUTAGE_DEADLINE_S, "no answer while down"
                for path in ("/users/u1/recommendations", "/products/p8/related"):
                    t0 = time.perf_counter()
                    r = client.get(path, params={"k": 3})
                    reads.append((r.status_code, time.perf_counter() - t0))
                writer.join(timeout=0.2)

            # reads kept answering from the loaded artifacts, quickly
            assert reads and {status for status, _ in reads} == {200}
            assert max(seconds for _, seconds in reads) < 5
            # the write was refused with a clear 503 and nothing was recorded in memory
            [refused] = answers
            assert refused.status_code == 503, refused.text
            assert "graph store unavailable, event not recorded" in refused.json()["detail"]
            assert "p6" not in service.history_of("u1")

            # ---- Neo4j is back on the same port with the same data ---------------------------
            own_neo4j.restart()
            retried = post("u1", "p6", "purchase")  # the client's retry of the refused event
            assert retried.status_code == 201, retried.text
            assert retried.json()["count"] == 1 and retried.json()["history"] == \
                len(PURCHASES["u1"]) + 1
            assert "p6" in service.history_of("u1")
            assert post("walk-in", "p2", "cart").status_code == 201
            assert client.get("/products/p1").status_code == 200
    finally:
        app_store.close()

    # every event answered 201 is in the store exactly once, and nothing else was added
    with Neo4jStore(settings(own_neo4j)) as store:
        after = stored_events(store)
    added = {key: n for key, n in after.items() if before.get(key) != n}
    assert added == {event: 1 for event in accepted}
    assert len(accepted) == 3


class StoreThatHangs(EmbeddedStore):
    """An embedded store whose lookups hang until released, then fail as an unreachable
    Neo4j's do (the driver retrying for 30 s and more, then ServiceUnavailable)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.waiting = 0
        self._count = threading.Lock()

    def record_events(self, events, timeout=None):  # noqa: ANN001, ANN201 - as the base
        with self._count:
            self.waiting += 1
        self.release.wait(60)
        raise ConnectionError("graph store unreachable")


def test_stuck_event_writes_do_not_starve_reads(tmp_path: Path) -> None:
    """45 events hang on the store (more than the 40 threads of the shared pool); reads
    still answer at once, and the events get their 503 when the store gives up."""
    workspace = tmp_path / "ws"
    with EmbeddedStore(workspace / "graph") as store:
        store.load(small_shop())
        train_recommender(store, workspace, NO_GNN, log=lambda _: None)
    hanging = StoreThatHangs(workspace / "graph")
    app = create_app(workspace, store=hanging, api_key=API_KEY, load_search=False)
    answers: list[int] = []
    with TestClient(app) as client:
        def post(i: int) -> None:
            r = client.post("/events", headers=KEY,
                            json={"user_id": f"shopper{i}", "product_id": "p1", "kind": "view"})
            answers.append(r.status_code)

        writers = [threading.Thread(target=post, args=(i,)) for i in range(45)]
        for t in writers:
            t.start()
        try:
            deadline = time.monotonic() + 30
            while hanging.waiting < EVENT_WRITERS:  # every event thread is stuck now
                assert time.monotonic() < deadline, f"only {hanging.waiting} events started"
                time.sleep(0.05)
            reads: list[httpx.Response] = []
            reader = threading.Thread(target=lambda: reads.append(
                client.get("/users/u1/recommendations", params={"k": 3})))
            reader.start()
            reader.join(timeout=10)
            assert not reader.is_alive(), "a read waited behind the stuck event writes"
            assert reads[0].status_code == 200
        finally:
            hanging.release.set()
            for t in writers:
                t.join(timeout=60)
    assert answers == [503] * 45
