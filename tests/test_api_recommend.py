"""The recommendation half of the HTTP API on the small shop graph (tests/shop_graph.py):
recommendations, related products, live events written to a real embedded store, search
personalisation and recommender reloads. The recommender is really trained (the TINY config
of tests/test_service.py) and the search artifacts really built, once per module (~20 s)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import neo4j.exceptions
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api.app as api_app
from api.app import PERSONAL_WEIGHT, RECOMMENDER_HEADER, create_app
from kg.embedded import EmbeddedStore
from kg.schema import INTERACTED, GraphBatch
from recommender.service import RecommendationService
from recommender.training import HybridConfig, current_version, train_recommender
from tests.shop_graph import PURCHASES, small_shop, trained_shop
from tests.test_service import TINY

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "rec-key-5e0b"
KEY = {"X-API-Key": API_KEY}
NO_GNN = HybridConfig(**{**TINY.to_dict(), "gnn": None})  # a quick second version


# ---- one trained workspace for the module; tests that write get their own copy --------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return trained_shop(tmp_path_factory.mktemp("rec-ws"), TINY)


@pytest.fixture(scope="module")
def client(workspace) -> Iterator[TestClient]:
    """Read-only tests share this client; nothing here may post an event that lands."""
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), api_key=API_KEY)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def copy(workspace, tmp_path) -> Path:
    """A private copy of the trained workspace, for tests that write to the store."""
    return Path(shutil.copytree(workspace, tmp_path / "ws"))


def writable_app(ws: Path, store: EmbeddedStore | None = None, **options) -> FastAPI:
    """An app over `ws` without search (faster to start; these tests do not search)."""
    return create_app(ws, store=store or EmbeddedStore(ws / "graph"), api_key=API_KEY,
                      load_search=False, **options)


def ids(body: dict) -> list[str]:
    return [item["id"] for item in body["items"]]


def edges(store: EmbeddedStore, user: str) -> dict[tuple[str, str], dict]:
    rows = store.interactions(user_id=user)
    return {(r["product_id"], r["kind"]): r for r in rows.to_dict("records")}


# ---- readiness and schema -------------------------------------------------------------------
def test_ready_reports_both_parts(client, workspace) -> None:
    body = client.get("/ready").json()
    assert body["recommender"] == current_version(workspace).name
    assert body["recommender_users"] == 7 and body["products"] == 8
    assert body["artifacts"] and body["not_loaded"] == {}


def test_openapi_documents_the_new_routes(client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/users/{user_id}/recommendations", "/products/{product_id}/related",
            "/events"} <= set(schema["paths"])
    assert schema["paths"]["/events"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "201" in schema["paths"]["/events"]["post"]["responses"]
    kind = schema["components"]["schemas"]["EventIn"]["properties"]["kind"]
    assert kind["enum"] == ["view", "cart", "purchase"]


def test_starts_without_a_recommender_and_events_still_reach_the_store(tmp_path) -> None:
    store = EmbeddedStore(tmp_path / "graph")
    store.load(small_shop())
    with TestClient(create_app(tmp_path, store=store)) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and "shopgraph train" in ready.json()["detail"]
        r = c.get("/users/u1/recommendations")
        assert r.status_code == 503 and "shopgraph train" in r.json()["detail"]
        assert c.get("/products/p1/related").status_code == 503
        event = c.post("/events", json={"user_id": "u1", "product_id": "p6", "kind": "view"})
        assert event.status_code == 201 and event.json()["recommender"] is None
    assert ("p6", "view") in edges(store, "u1")


# ---- recommendations ------------------------------------------------------------------------
def test_recommendations_with_reasons(client, workspace) -> None:
    r = client.get("/users/u1/recommendations", params={"k": 3, "explain": "true"})
    assert r.status_code == 200, r.text
    assert r.headers[RECOMMENDER_HEADER] == current_version(workspace).name
    body = r.json()
    assert body["user"] == "u1" and body["version"] == r.headers[RECOMMENDER_HEADER]
    assert body["items"] and not set(PURCHASES["u1"]) & set(ids(body))
    assert "p7" not in ids(body)  # out of stock
    for item in body["items"]:
        assert item["reasons"] and item["sources"] and item["title"] and item["category"]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    plain = client.get("/users/u1/recommendations", params={"k": 3}).json()
    assert ids(plain) == ids(body) and all(item["reasons"] is None for item in plain["items"])


def test_recommendation_filters(client) -> None:
    kitchen = client.get("/users/u1/recommendations",
                         params={"k": 5, "category": "home > kitchen"}).json()
    assert kitchen["items"]
    assert all(i["category"].startswith("Home > Kitchen") for i in kitchen["items"])
    nova = client.get("/users/u1/recommendations", params={"k": 5, "brand": "nova"}).json()
    assert ids(nova) == ["p8"]  # p4 bought, p7 out of stock
    no_home = client.get("/users/u4/recommendations",
                         params={"k": 5, "exclude_category": ["Home"]}).json()
    assert no_home["items"] and all(not i["category"].startswith("Home")
                                    for i in no_home["items"])
    diverse = client.get("/users/u4/recommendations", params={"k": 3, "diversity": 1.0})
    assert diverse.status_code == 200 and len(diverse.json()["items"]) == 3


def test_short_history_gets_popular_products_of_the_categories_touched(client) -> None:
    body = client.get("/users/u7/recommendations", params={"k": 2}).json()  # one kitchen view
    assert body["items"] and all(i["category"] == "Home > Kitchen" for i in body["items"])


def test_unknown_user_is_404_naming_the_id(client) -> None:
    r = client.get("/users/nobody-42/recommendations")
    assert r.status_code == 404 and "'nobody-42'" in r.json()["detail"]


@pytest.mark.parametrize("params, field", [
    ({"k": 0}, "'k'"), ({"k": 101}, "'k'"), ({"k": "many"}, "'k'"),
    ({"diversity": -0.1}, "'diversity'"), ({"diversity": 1.5}, "'diversity'"),
    ({"diversity": "lots"}, "'diversity'"), ({"explain": "perhaps"}, "'explain'"),
])
def test_bad_recommendation_params_are_422(client, params, field) -> None:
    r = client.get("/users/u1/recommendations", params=params)
    assert r.status_code == 422 and field in r.json()["detail"]


# ---- related --------------------------------------------------------------------------------
def test_related_products_with_reasons(client) -> None:
    r = client.get("/products/p8/related", params={"k": 3})  # nobody bought p8
    assert r.status_code == 200 and RECOMMENDER_HEADER in r.headers
    body = r.json()
    assert body["product"] == "p8" and 0 < len(body["items"]) <= 3 and "p8" not in ids(body)
    assert all(i["reasons"] and i["sources"] for i in body["items"])
    assert any("Nova" in reason or "Kitchen" in reason or "Red" in reason
               for i in body["items"] for reason in i["reasons"])
    missing = client.get("/products/p99/related")
    assert missing.status_code == 404 and "'p99'" in missing.json()["detail"]
    assert client.get("/products/p8/related", params={"k": 0}).status_code == 422


# ---- events ---------------------------------------------------------------------------------
def test_purchase_event_lands_in_the_store_and_the_next_recommendations(copy) -> None:
    store = EmbeddedStore(copy / "graph")
    with TestClient(writable_app(copy, store)) as c:
        top = ids(c.get("/users/u1/recommendations", params={"k": 3}).json())[0]
        r = c.post("/events", json={"user_id": "u1", "product_id": top, "kind": "purchase",
                                    "ts": 5_000}, headers=KEY)
        assert r.status_code == 201, r.text
        assert r.json() == {"user_id": "u1", "product_id": top, "kind": "purchase",
                            "ts": 5_000, "count": 1, "new_user": False,
                            "recommender": current_version(copy).name, "history": 6,
                            "status": "recorded", "event_id": None, "seq": 1}
        assert top not in ids(c.get("/users/u1/recommendations", params={"k": 3}).json())
        again = c.post("/events", json={"user_id": "u1", "product_id": top,
                                        "kind": "purchase", "ts": 4_000}, headers=KEY)
        assert again.json()["count"] == 2
    # one edge per (user, product, kind): repeats raise count and weight, ts stays the latest
    on_disk = edges(EmbeddedStore(copy / "graph"), "u1")[(top, "purchase")]
    assert (on_disk["count"], on_disk["weight"], on_disk["ts"]) == (2, 2.0, 5_000)


def test_event_from_a_new_user_creates_the_user_node(copy) -> None:
    store = EmbeddedStore(copy / "graph")
    with TestClient(writable_app(copy, store)) as c:
        r = c.post("/events", json={"user_id": "walk-in", "product_id": "p6", "kind": "cart"},
                   headers=KEY)
        assert r.status_code == 201 and r.json()["new_user"] and r.json()["history"] == 1
        assert store.get_node("User", "walk-in") == {"id": "walk-in"}
        assert abs(r.json()["ts"] - time.time()) < 60  # no ts given: now
        recs = c.get("/users/walk-in/recommendations").json()  # cold start, not a 404
        assert recs["items"] and "p6" not in ids(recs)


def test_a_shopper_loaded_after_training_is_served_from_the_graph(copy) -> None:
    """A user the graph has but this version was not trained on: their stored history
    counts (not a 404); one with no interactions gets the cold start."""
    store = EmbeddedStore(copy / "graph")
    batch = GraphBatch()
    batch.add_node("User", "late")
    batch.add_node("User", "idle")
    for step, product in enumerate(["p1", "p2", "p4"]):
        batch.add_rel(INTERACTED, "late", product, {"kind": "purchase", "weight": 1.0,
                                                    "count": 1, "ts": 3_000 + step})
    store.load(batch)
    with TestClient(writable_app(copy, store)) as c:
        r = c.get("/users/late/recommendations", params={"k": 4, "explain": True})
        assert r.status_code == 200, r.text
        assert r.json()["items"] and not {"p1", "p2", "p4"} & set(ids(r.json()))
        assert all(item["reasons"] for item in r.json()["items"])
        idle = c.get("/users/idle/recommendations")
        assert idle.status_code == 200 and idle.json()["items"]
        assert c.get("/users/ghost/recommendations").status_code == 404


def test_events_need_the_api_key_when_one_is_configured(copy) -> None:
    store = EmbeddedStore(copy / "graph")
    before = store.interactions()
    event = {"user_id": "u1", "product_id": "p6", "kind": "purchase"}
    with TestClient(writable_app(copy, store)) as c:
        missing = c.post("/events", json=event)
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        wrong = c.post("/events", json=event, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        assert "p6" not in c.app.state.services.recommender.service.history_of("u1")
    assert store.interactions().equals(before)


def test_unknown_product_is_404_and_the_store_is_unchanged(copy) -> None:
    store = EmbeddedStore(copy / "graph")
    before, counts = store.interactions(), store.counts()
    with TestClient(writable_app(copy, store)) as c:
        r = c.post("/events", json={"user_id": "newcomer", "product_id": "p99",
                                    "kind": "view"}, headers=KEY)
        assert r.status_code == 404 and "'p99'" in r.json()["detail"]
    assert store.interactions().equals(before) and store.counts() == counts
    assert store.get_node("User", "newcomer") is None


@pytest.mark.parametrize("body", [
    b"{not json",
    b'{"user_id": "u1", "product_id": "p1", "kind": "wishlist"}',
    b'{"user_id": "u1", "kind": "view"}',
    b'{"user_id": "", "product_id": "p1", "kind": "view"}',
    b'{"user_id": "u1", "product_id": "p1", "kind": "view", "ts": -5}',
    b'{"user_id": "u1", "product_id": "p1", "kind": "view", "timestamp": 5}',
    b'["u1", "p1", "view"]',
])
def test_malformed_events_are_422(client, body) -> None:
    r = client.post("/events", content=body,
                    headers={**KEY, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] and "errors" in r.json()


def test_concurrent_events_for_one_user_all_land(copy) -> None:
    """8 threads x 5 events for one new user. Every event is in the live history; in the
    store each (product, kind) is one INTERACTED edge (MERGE) whose `count` is the number of
    events posted for it, so no read-modify-write was lost and the User node was created
    once."""
    store = EmbeddedStore(copy / "graph")
    products, kinds = ["p1", "p2", "p3", "p5", "p6"], ["view", "cart", "purchase"]
    posted = [(products[(t + i) % 5], kinds[(t * 5 + i) % 3], t, i)
              for t in range(8) for i in range(5)]
    responses: list = []
    lock = threading.Lock()
    with TestClient(writable_app(copy, store)) as c:
        service = c.app.state.services.recommender.service

        def post(thread: int) -> None:
            for product, kind, t, i in posted:
                if t == thread:
                    r = c.post("/events", headers=KEY, json={
                        "user_id": "busy", "product_id": product, "kind": kind,
                        "ts": 10_000 + 10 * i + t})
                    with lock:
                        responses.append(r)

        threads = [threading.Thread(target=post, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.status_code for r in responses] == [201] * 40
        assert sum(r.json()["new_user"] for r in responses) == 1
        assert len(service.history_of("busy")) == 40  # every event, repeats included
        assert sorted(set(service.history_of("busy"))) == products
        assert max(r.json()["history"] for r in responses) == len(products)
        recs = ids(c.get("/users/busy/recommendations", params={"k": 5}).json())
        assert recs and not set(recs) & set(products)
    expected = Counter((product, kind) for product, kind, _, _ in posted)
    stored = edges(EmbeddedStore(copy / "graph"), "busy")
    assert {key: row["count"] for key, row in stored.items()} == dict(expected)
    assert sum(row["count"] for row in stored.values()) == 40


class StoreThatLosesItsConnectionOnWrite(EmbeddedStore):
    """A real embedded store whose writes fail the way an unreachable Neo4j's do."""

    failure: BaseException = ConnectionError("connection to the graph store lost")

    def _write(self, batch: GraphBatch, progress: bool) -> None:
        raise self.failure

    def record_interactions(self, events):  # noqa: ANN001, ANN201 - as the base class
        raise self.failure


@pytest.mark.parametrize("failure", [
    ConnectionError("connection refused"),
    OSError(104, "Connection reset by peer"),
    neo4j.exceptions.ServiceUnavailable("Couldn't connect to neo4j:7687"),
    neo4j.exceptions.SessionExpired("session expired"),
], ids=["ConnectionError", "OSError", "ServiceUnavailable", "SessionExpired"])
def test_store_failure_is_503_and_nothing_is_recorded(copy, failure) -> None:
    store = StoreThatLosesItsConnectionOnWrite(copy / "graph")
    store.failure = failure
    before = store.interactions()
    with TestClient(writable_app(copy, store)) as c:
        service = c.app.state.services.recommender.service
        history = service.history_of("u1")
        recs = ids(c.get("/users/u1/recommendations", params={"k": 3}).json())
        r = c.post("/events", json={"user_id": "u1", "product_id": recs[0],
                                    "kind": "purchase"}, headers=KEY)
        assert r.status_code == 503 and "graph store unavailable" in r.json()["detail"]
        assert service.history_of("u1") == history
        assert ids(c.get("/users/u1/recommendations", params={"k": 3}).json()) == recs
    assert EmbeddedStore(copy / "graph").interactions().equals(before)


# ---- search personalisation -----------------------------------------------------------------
def test_search_is_personalised_by_the_users_blend(client) -> None:
    params = {"q": "kitchen", "k": 6}
    plain = client.get("/search", params=params).json()
    assert plain["personalised"] is False
    body = client.get("/search", params={**params, "user": "u1"}).json()
    assert body["personalised"] is True
    hits, before = body["hits"], {h["id"]: h for h in plain["hits"]}
    assert {h["id"] for h in hits} == set(before)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    spread = max(h["score"] for h in before.values()) - min(h["score"] for h in before.values())
    bonus = {h["id"]: h["sources"]["personal"] for h in hits}
    for h in hits:  # search score + a bonus by rank, at most PERSONAL_WEIGHT of the spread
        assert h["score"] == pytest.approx(before[h["id"]]["score"] + bonus[h["id"]], abs=1e-5)
        assert 0 < bonus[h["id"]] <= PERSONAL_WEIGHT * spread + 1e-6
    # the bonus follows the user's blend: unseen hits rank as in the user's recommendations
    recs = ids(client.get("/users/u1/recommendations", params={"k": 8}).json())
    unseen = [i for i in recs if i in bonus]
    assert len(unseen) >= 2
    assert sorted(unseen, key=lambda i: -bonus[i]) == unseen


def test_search_personalisation_leaves_short_histories_alone_and_404s_strangers(client
                                                                                 ) -> None:
    plain = client.get("/search", params={"q": "red", "k": 5}).json()
    short = client.get("/search", params={"q": "red", "k": 5, "user": "u7"}).json()
    assert short["personalised"] is True and short["hits"] == plain["hits"]
    unknown = client.get("/search", params={"q": "red", "user": "stranger"})
    assert unknown.status_code == 404 and "'stranger'" in unknown.json()["detail"]


# ---- reload ---------------------------------------------------------------------------------
def test_admin_reload_swaps_the_recommender_while_serving(copy, monkeypatch) -> None:
    shutil.rmtree(copy / "artifacts" / "content")  # recommender only: search is absent
    store = EmbeddedStore(copy / "graph")
    first = current_version(copy).name
    app = create_app(copy, store=store, api_key=API_KEY)
    services = app.state.services
    with TestClient(app) as c:
        ready = c.get("/ready").json()
        assert ready["recommender"] == first and "search" in ready["not_loaded"]
        assert c.post("/admin/reload").status_code == 401
        second = train_recommender(store, copy, NO_GNN, log=lambda _: None)["version"]
        # an event after the new version's training snapshot: replayed onto it on reload
        r = c.post("/events", json={"user_id": "u2", "product_id": "p8", "kind": "purchase",
                                    "ts": 9_000}, headers=KEY)
        assert r.status_code == 201 and r.json()["recommender"] == first
        old = services.recommender

        real_build = api_app.build_recommender
        building = threading.Event()

        def slow_build(workspace: Path) -> RecommendationService:
            building.set()
            built = real_build(workspace)
            time.sleep(0.8)  # a long load: requests keep being served by the old version
            return built

        monkeypatch.setattr(api_app, "build_recommender", slow_build)
        stop = threading.Event()
        seen: Counter = Counter()
        during_build: list[str] = []
        lock = threading.Lock()

        def hammer(user: str) -> None:
            while not stop.is_set():
                r = c.get(f"/users/{user}/recommendations", params={"k": 3})
                with lock:
                    seen[(r.status_code, r.headers.get(RECOMMENDER_HEADER))] += 1
                    if building.is_set() and services.recommender is old:
                        during_build.append(r.headers.get(RECOMMENDER_HEADER, ""))

        threads = [threading.Thread(target=hammer, args=(u,)) for u in ("u1", "u4", "u6")]
        for t in threads:
            t.start()
        time.sleep(0.2)
        reload = c.post("/admin/reload", headers=KEY)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        assert reload.status_code == 200, reload.text
        body = reload.json()
        assert (body["recommender"], body["previous_recommender"]) == (second, first)
        assert body["artifacts"] is None and "search" in body["not_loaded"]
        assert {status for status, _ in seen} == {200}
        assert {version for _, version in seen} == {first, second}
        assert during_build and set(during_build) == {first}
        r = c.get("/users/u2/recommendations", params={"k": 3})
        assert r.headers[RECOMMENDER_HEADER] == second
        assert c.get("/ready").json()["recommender"] == second
        # the new object serves, the old one is untouched; the live event survived the swap
        assert services.recommender is not old and old.service.version == first
        assert "p8" in services.recommender.service.history_of("u2")
        assert "p8" not in ids(r.json())


def test_failed_recommender_reload_keeps_serving_the_old_version(copy, monkeypatch) -> None:
    shutil.rmtree(copy / "artifacts" / "content")
    with TestClient(writable_app(copy)) as c:
        first = c.get("/ready").json()["recommender"]

        def broken(workspace: Path) -> RecommendationService:
            raise ValueError("corrupt artifacts")

        monkeypatch.setattr(api_app, "build_recommender", broken)
        r = c.post("/admin/reload", headers=KEY)
        assert r.status_code == 503
        assert "still serving" in r.json()["detail"] and first in r.json()["detail"]
        assert "corrupt artifacts" in r.json()["detail"]
        ok = c.get("/users/u1/recommendations")
        assert ok.status_code == 200 and ok.headers[RECOMMENDER_HEADER] == first


# ---- the serve command ----------------------------------------------------------------------
def test_serve_command_prints_the_urls_and_serves(workspace) -> None:
    """`shopgraph serve` as a user runs it: a real uvicorn process over the workspace."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SHOPGRAPH_API_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workspace",
         str(workspace), "--store", "embedded"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = None
        deadline = time.time() + 90
        while ready is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                    ready = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert ready is not None, "the server did not become ready"
        assert ready["recommender"] == current_version(workspace).name and ready["artifacts"]
        url = f"http://127.0.0.1:{port}/users/u1/recommendations?k=2"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and len(json.loads(r.read())["items"]) == 2
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"API docs:  http://127.0.0.1:{port}/docs" in output
    assert "serving search, recommender" in output
