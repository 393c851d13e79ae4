"""Live events through the HTTP API on the embedded (SQLite) store: batches, idempotent
retries, durability across a SIGKILL of a real server process, and events reaching the other
processes that share the store (`shopgraph serve --workers N`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import MAX_EVENT_BATCH, create_app
from kg.embedded import EmbeddedStore
from tests.serve_process import KEY, ROOT, free_port, get, post, start_server
from tests.shop_graph import trained_shop
from tests.test_service import TINY


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return trained_shop(tmp_path_factory.mktemp("events-ws"), TINY)


@pytest.fixture
def copy(workspace, tmp_path) -> Path:
    return Path(shutil.copytree(workspace, tmp_path / "ws"))


def app_over(ws: Path, **options):
    return create_app(ws, store=EmbeddedStore(ws / "graph"), api_key=KEY["X-API-Key"],
                      load_search=False, **options)


def count_of(store: EmbeddedStore, user: str, product: str, kind: str) -> int:
    rows = store.interactions(user, product, kind)
    return 0 if rows.empty else int(rows["count"].iloc[0])


def test_batch_records_each_event_and_reports_each_outcome(copy) -> None:
    events = [{"user_id": "bulk", "product_id": p, "kind": "view", "event_id": f"b-{i}"}
              for i, p in enumerate(["p1", "p2", "p2", "p99"])]
    events.append(dict(events[0]))  # the same event_id again: a duplicate
    with TestClient(app_over(copy)) as c:
        r = c.post("/events/batch", json=events, headers=KEY)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["recorded"], body["duplicates"], body["unknown_products"]) == (3, 1, 1)
        assert [x["status"] for x in body["results"]] == [
            "recorded", "recorded", "recorded", "unknown_product", "duplicate"]
        assert [x["count"] for x in body["results"][:3]] == [1, 1, 2]
        assert body["results"][0]["new_user"] and not body["results"][1]["new_user"]
        recs = c.get("/users/bulk/recommendations", params={"k": 3}).json()
        assert recs["items"] and not {"p1", "p2"} & {i["id"] for i in recs["items"]}
        again = c.post("/events/batch", json=events, headers=KEY).json()
        assert (again["recorded"], again["duplicates"]) == (0, 4)
        assert c.post("/events/batch", json=events, headers={}).status_code == 401
        too_many = [events[1]] * (MAX_EVENT_BATCH + 1)
        assert c.post("/events/batch", json=too_many, headers=KEY).status_code == 422
    store = EmbeddedStore(copy / "graph")
    assert count_of(store, "bulk", "p2", "view") == 2 and count_of(store, "bulk", "p1", "view")


def test_a_retried_event_answers_200_and_counts_once(copy) -> None:
    event = {"user_id": "u1", "product_id": "p6", "kind": "cart", "event_id": "retry-1"}
    with TestClient(app_over(copy)) as c:
        first = c.post("/events", json=event, headers=KEY)
        second = c.post("/events", json=event, headers=KEY)
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json()["seq"] == second.json()["seq"]
        assert second.json()["status"] == "duplicate" and second.json()["count"] == 1
    assert count_of(EmbeddedStore(copy / "graph"), "u1", "p6", "cart") == 1


def test_a_second_app_on_the_store_picks_up_the_events_of_the_first(copy) -> None:
    """Two server processes share a store: what one records reaches the other's next
    recommendations through the store's event log (here two apps in one process)."""
    with TestClient(app_over(copy, follow_events=True)) as writer, \
            TestClient(app_over(copy, follow_events=True)) as reader:
        before = [i["id"] for i in reader.get("/users/u1/recommendations").json()["items"]]
        top = before[0]
        assert writer.post("/events", json={"user_id": "u1", "product_id": top,
                                            "kind": "purchase"}, headers=KEY).status_code == 201
        deadline = time.time() + 1.0
        while time.time() < deadline:
            now = [i["id"] for i in reader.get("/users/u1/recommendations").json()["items"]]
            if top not in now:
                break
            time.sleep(0.05)
        assert top not in now, "the event did not reach the other app within 1 s"
        assert reader.app.state.services.follow_events() == 0  # nothing applied twice


# ---- real server processes ------------------------------------------------------------------
def test_sigkill_loses_no_acknowledged_event_and_retries_double_none(copy) -> None:
    """4 clients stream events (one distinct edge each, with an event_id) into a real server;
    it is SIGKILLed mid-stream. Every event answered 201 is in the store; re-posting the whole
    stream to a restarted server records only the missing ones, so each edge counts 1."""
    port = free_port()
    server = start_server(copy, port)
    stream = [{"user_id": f"k{i % 97}", "product_id": f"p{1 + i % 8}", "kind": "view",
               "ts": 10_000 + i, "event_id": f"kill-{i}"} for i in range(776)]
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(part: int) -> None:
        for event in stream[part::4]:
            if stop.is_set():
                return
            try:
                status, _ = post(port, "/events", event, timeout=5)
            except OSError:  # the server is gone
                return
            if status == 201:
                with lock:
                    acknowledged.add(event["event_id"])

    threads = [threading.Thread(target=client, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    while len(acknowledged) < 150:
        time.sleep(0.01)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(10)
    stop.set()
    for t in threads:
        t.join()
    assert 150 <= len(acknowledged) < len(stream)
    store = EmbeddedStore(copy / "graph")
    logged = {e.event.event_id for e in store.events_since(0)}
    assert acknowledged <= logged  # nothing answered 201 was lost
    server = start_server(copy, port)
    try:
        outcomes = [post(port, "/events", event)[0] for event in stream]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert outcomes.count(200) == len(logged) and outcomes.count(201) == len(stream) - len(logged)
    counts = {(e["user_id"], e["product_id"]): count_of(store, e["user_id"], e["product_id"],
                                                        "view") for e in stream}
    assert set(counts.values()) == {1}  # none lost, none doubled


def test_workers_share_the_store_and_see_each_others_events(copy) -> None:
    """`shopgraph serve --workers 2`: an event posted through one worker reaches the
    recommendations every worker gives within 1 s (the kernel spreads connections)."""
    port = free_port()
    server = start_server(copy, port, workers=2)
    try:
        pids = set()
        deadline = time.time() + 30
        while len(pids) < 2 and time.time() < deadline:  # fresh connections reach both
            pids.add(get(port, "/ready")["pid"])
        assert len(pids) == 2, "both workers should answer"
        top = get(port, "/users/u2/recommendations?k=1")["items"][0]["id"]
        status, body = post(port, "/events", {"user_id": "u2", "product_id": top,
                                              "kind": "purchase"})
        assert status == 201
        time.sleep(1.0)
        seen = {}
        deadline = time.time() + 30
        while len(seen) < 2 and time.time() < deadline:
            ready = get(port, "/ready")
            items = get(port, "/users/u2/recommendations?k=3")["items"]
            seen.setdefault(ready["pid"], [i["id"] for i in items])
        assert len(seen) == 2
        assert all(top not in items for items in seen.values()), seen
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


BULK_LOAD = """
import sys
import pandas as pd
from kg.embedded import EmbeddedStore
from kg.schema import INTERACTED, PRODUCT, USER, GraphBatch
n = int(sys.argv[2])
batch = GraphBatch()
batch.add_nodes(PRODUCT, pd.DataFrame({"id": [f"bulk{i}" for i in range(n)], "title": "bulk"}))
batch.add_nodes(USER, pd.DataFrame({"id": [f"bu{i}" for i in range(n // 10)]}))
batch.add_rels(INTERACTED, pd.DataFrame({"source": [f"bu{i % (n // 10)}" for i in range(n)],
                                         "target": [f"bulk{i}" for i in range(n)],
                                         "kind": "view", "count": 1, "ts": 5}))
EmbeddedStore(sys.argv[1]).load(batch)
print("loaded")
"""


def test_reads_keep_serving_while_another_process_bulk_loads(copy) -> None:
    """A bulk load holds the store's write lock for seconds; reads go on from the last
    committed state (WAL), and see the new rows once it commits."""
    with TestClient(app_over(copy)) as c:
        loader = subprocess.Popen([sys.executable, "-c", BULK_LOAD, str(copy / "graph"),
                                   "300000"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        statuses: Counter = Counter()
        during = 0
        while loader.poll() is None:
            statuses[c.get("/products/p1").status_code] += 1
            statuses[c.get("/graph/neighbourhood/Product/p2").status_code] += 1
            if c.get("/products/bulk7").status_code == 404:
                during += 1
        assert loader.wait() == 0 and "loaded" in loader.stdout.read()
        assert set(statuses) == {200} and during > 10, (statuses, during)
        assert c.get("/products/bulk7").status_code == 200
