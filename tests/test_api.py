"""The HTTP API end to end: a real 150-product fashion workspace, the real embedded store (and
Neo4j for the graph endpoints), FastAPI's TestClient; plus the Docker packaging."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import api.app as api_app
from api.app import create_app
from api.security import ApiKey, require_api_key
from kg.embedded import EmbeddedStore
from kg.importers import load_dataset
from kg.schema import NODE_LABELS
from recommender.search import ProductSearch
from tests.fashion_slice import FASHION, build_workspace, write_slice

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-7f3a"


# ---- one workspace for the whole module -----------------------------------------------------
@pytest.fixture(scope="module")
def slice_data(tmp_path_factory) -> Path:
    if not (FASHION / "styles_sample.csv").exists():
        pytest.skip(f"fashion data not found at {FASHION}")
    return write_slice(tmp_path_factory.mktemp("fashion-slice"))


@pytest.fixture(scope="module")
def workspace(slice_data, tmp_path_factory) -> Path:
    return build_workspace(slice_data, tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def search(workspace) -> ProductSearch:
    return ProductSearch.load(workspace)


@pytest.fixture(scope="module")
def app(workspace, search):
    return create_app(workspace, store=EmbeddedStore(workspace / "graph"), api_key=API_KEY,
                      search=search, max_upload_bytes=2_000_000)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def photo(search: ProductSearch, type_suffix: str) -> tuple[str, bytes]:
    row = search.catalog[search.catalog["category"].str.endswith(type_suffix)].iloc[0]
    return str(row["id"]), Path(row["image"]).read_bytes()


def category_of(search: ProductSearch, product_id: str) -> str:
    return search.catalog.set_index("id").loc[product_id, "category"].split(" > ")[-1]


def multipart(field: str, filename: str, payload: bytes, content_type: str,
              boundary: str = "shopgraphboundary") -> tuple[bytes, dict[str, str]]:
    """A hand-made multipart body, for requests whose framing the test controls."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    body += payload + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


# ---- liveness, readiness, schema ------------------------------------------------------------
def test_health_and_ready(client, search) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["products"] == 150 and ready.json()["store"] == "embedded"
    assert len(ready.json()["artifacts"]) == 12
    # no recommender trained in this workspace: ready for search, and it says what is missing
    assert ready.json()["recommender"] is None
    assert "shopgraph train" in ready.json()["not_loaded"]["recommender"]


def test_not_ready_without_artifacts_but_alive(tmp_path) -> None:
    app = create_app(tmp_path, store=EmbeddedStore(tmp_path / "graph"))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and "shopgraph train" in ready.json()["detail"]
        assert c.get("/search", params={"q": "shirt"}).status_code == 503


def test_openapi_schema_is_typed(client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/search", "/search/image", "/products/{product_id}",
            "/graph/neighbourhood/{label}/{node_id}", "/health", "/ready", "/metrics",
            "/admin/reload", "/users/{user_id}/recommendations",
            "/products/{product_id}/related", "/events"} <= set(schema["paths"])
    models = schema["components"]["schemas"]
    assert {"SearchOut", "SearchHitOut", "ProductOut", "NeighbourhoodOut", "ErrorBody",
            "RecommendationsOut", "RelatedOut", "EventIn", "EventOut"} <= set(models)
    assert models["NodeLabel"]["enum"] == list(NODE_LABELS)
    search_params = {p["name"]: p for p in schema["paths"]["/search"]["get"]["parameters"]}
    assert "history" in search_params["user"]["description"]
    assert search_params["k"]["schema"]["maximum"] == 100
    reload_security = schema["paths"]["/admin/reload"]["post"]["security"]
    assert reload_security == [{"APIKeyHeader": []}]


# ---- search ---------------------------------------------------------------------------------
def test_english_text_search(client, search) -> None:
    r = client.get("/search", params={"q": "Men Black Sports Shoes", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["understood"]["concepts"] == [["gender", "Men"], ["colour", "Black"],
                                              ["category", "Sports Shoes"]]
    assert len(body["hits"]) == 5 and body["personalised"] is False
    assert all(category_of(search, h["id"]) == "Sports Shoes" for h in body["hits"])
    # every word understood through the graph: BM25 + graph rank it, no query encoding
    assert set(body["hits"][0]["sources"]) == {"bm25", "graph"}
    assert body["understood"]["dense"] is False
    # a word the graph does not know brings the dense and joint-space sources in
    r = client.get("/search", params={"q": "Men Black Sports Shoes breathable", "k": 5})
    assert set(r.json()["hits"][0]["sources"]) == {"bm25", "text", "image", "graph"}


def test_chinese_text_search_matches_english(client) -> None:
    english = client.get("/search", params={"q": "Men Black Sports Shoes", "k": 10}).json()
    chinese = client.get("/search", params={"q": "男士黑色运动鞋", "k": 10}).json()
    assert chinese["query"] == "男士黑色运动鞋"
    assert chinese["understood"]["english"] == "Men Black Sports Shoes"
    assert len({h["id"] for h in english["hits"]} & {h["id"] for h in chinese["hits"]}) >= 8


def test_search_filters(client, search) -> None:
    hits = client.get("/search", params={"q": "black", "k": 20, "category": "Footwear"}
                      ).json()["hits"]
    assert hits and all(category_of(search, h["id"]).endswith("Shoes") for h in hits)


def test_image_search_with_real_photo(client, search) -> None:
    product_id, jpeg = photo(search, "Watches")
    r = client.post("/search/image", files={"image": ("watch.jpg", jpeg, "image/jpeg")},
                    data={"k": "10"})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [h["id"] for h in body["hits"]]
    assert product_id in ids[:3]
    assert body["understood"]["image_type"] == "Watches"
    assert sum(category_of(search, i) == "Watches" for i in ids) >= 8


def test_image_with_words_and_category(client, search) -> None:
    product_id, jpeg = photo(search, "> Shirts")
    colour = search.catalog.set_index("id").loc[product_id, "colour"]
    r = client.post("/search/image",
                    files={"image": ("shirt.jpg", jpeg, "application/octet-stream")},
                    data={"q": f"{colour} shirt", "k": "5", "category": "Apparel"})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["id"] == product_id


def test_bad_k_is_422_with_a_clear_message(client, search) -> None:
    for k in (0, 101, "many"):
        r = client.get("/search", params={"q": "shirt", "k": k})
        assert r.status_code == 422 and "'k'" in r.json()["detail"]
    _, jpeg = photo(search, "Watches")
    r = client.post("/search/image", files={"image": ("w.jpg", jpeg, "image/jpeg")},
                    data={"k": "0"})
    assert r.status_code == 422 and "'k'" in r.json()["detail"]
    blank = client.get("/search", params={"q": "   "})
    assert blank.status_code == 422 and "text query" in blank.json()["detail"]
    missing = client.get("/search")
    assert missing.status_code == 422 and "'q'" in missing.json()["detail"]


def test_non_image_upload_is_415(client) -> None:
    r = client.post("/search/image", files={"image": ("notes.txt", b"not a photo", "text/plain")})
    assert r.status_code == 415
    assert "notes.txt" in r.json()["detail"] and "not an image" in r.json()["detail"]
    # a declared image type does not help when the bytes are not one
    r = client.post("/search/image", files={"image": ("fake.jpg", b"\x00" * 500, "image/jpeg")})
    assert r.status_code == 415


def test_oversized_upload_is_413(workspace, search) -> None:
    jpeg = max((Path(p).read_bytes() for p in search.catalog["image"]), key=len)
    limit = len(jpeg) - 1
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), search=search,
                     max_upload_bytes=limit)
    with TestClient(app) as c:
        # just over the image limit: caught exactly on the uploaded part
        r = c.post("/search/image", files={"image": ("w.jpg", jpeg, "image/jpeg")})
        assert r.status_code == 413 and f"{limit:,} bytes" in r.json()["detail"]
        # a declared Content-Length over the body cap: refused before the body is read
        big = jpeg + b"\x00" * 200_000
        body, headers = multipart("image", "big.jpg", big, "image/jpeg")
        r = c.post("/search/image", content=body, headers=headers)
        assert r.status_code == 413 and "request body too large" in r.json()["detail"]
        # chunked (no Content-Length): counted while streaming
        chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))
        r = c.post("/search/image", content=chunks, headers=headers)
        assert r.status_code == 413 and "request body too large" in r.json()["detail"]


def test_endless_upload_stream_is_cut_off(workspace, search) -> None:
    """At the ASGI level: a client that never stops sending is refused after the cap."""
    import asyncio

    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), search=search,
                     max_upload_bytes=10_000)
    head, headers = multipart("image", "endless.jpg", b"", "image/jpeg")
    received, sent = [], []

    async def receive() -> dict:
        # the part's header, then image bytes forever
        chunk = head[:head.index(b"\r\n\r\n") + 4] if not received else b"\xff" * 4096
        received.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/search/image", "raw_path": b"",
             "root_path": "", "query_string": b"", "server": ("test", 80),
             "client": ("test", 1), "headers": [(k.encode(), v.encode())
                                                for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413, sent
    assert sum(received) <= 10_000 + api_app.MULTIPART_OVERHEAD + 4096


def test_personaliser_hook(app, client) -> None:
    calls = []

    def personaliser(user_id, hits):
        calls.append(user_id)
        if user_id != "u1":
            raise KeyError(user_id)
        return list(reversed(hits))

    plain = client.get("/search", params={"q": "watch", "k": 5, "user": "u1"}).json()
    assert plain["personalised"] is False  # no personaliser: the parameter is ignored
    app.state.personaliser = personaliser
    try:
        r = client.get("/search", params={"q": "watch", "k": 5, "user": "u1"}).json()
        assert r["personalised"] is True
        assert [h["id"] for h in r["hits"]] == [h["id"] for h in plain["hits"]][::-1]
        unknown = client.get("/search", params={"q": "watch", "user": "ghost"})
        assert unknown.status_code == 404 and "ghost" in unknown.json()["detail"]
        assert calls == ["u1", "ghost"]
    finally:
        app.state.personaliser = None


def test_unexpected_errors_are_500_without_traceback(app) -> None:
    def broken(user_id, hits):
        raise RuntimeError("secret internal state")

    app.state.personaliser = broken
    try:
        c = TestClient(app, raise_server_exceptions=False)
        r = c.get("/search", params={"q": "watch", "user": "u1"})
        assert r.status_code == 500
        assert r.json() == {"detail": "internal server error"}
        assert "secret" not in r.text and "Traceback" not in r.text
    finally:
        app.state.personaliser = None


def test_blocking_search_does_not_block_the_event_loop(app, client) -> None:
    def slow(user_id, hits):
        time.sleep(1.5)
        return hits

    app.state.personaliser = slow
    try:
        t = threading.Thread(target=client.get, args=("/search",),
                             kwargs={"params": {"q": "watch", "user": "u1"}})
        t.start()
        time.sleep(0.2)
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert time.perf_counter() - started < 1.0
        t.join()
    finally:
        app.state.personaliser = None


# ---- products and the graph -----------------------------------------------------------------
def test_product_details_from_the_graph(client, search) -> None:
    product_id, _ = photo(search, "Watches")
    r = client.get(f"/products/{product_id}")
    assert r.status_code == 200
    body = r.json()
    row = search.catalog.set_index("id").loc[product_id]
    assert body["id"] == product_id and body["properties"]["title"] == row["title"]
    assert body["brand"]["label"] == "Brand" and body["brand"]["properties"]["name"] == row["brand"]
    assert [c["id"] for c in body["categories"]] == [row["category"]]
    kinds = {a["properties"]["kind"]: a["properties"]["value"] for a in body["attributes"]}
    assert kinds["colour"] == row["colour"] and kinds["gender"] == row["gender"]
    # the photo is this API's URL, never the server's file path
    assert body["properties"]["image"] == f"/products/{product_id}/image"
    assert client.get(body["properties"]["image"]).content == Path(row["image"]).read_bytes()
    missing = client.get("/products/no-such-product")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no product with id 'no-such-product'"}


def test_neighbourhood_depths_and_errors(client, search) -> None:
    product_id, _ = photo(search, "Watches")
    one = client.get(f"/graph/neighbourhood/Product/{product_id}", params={"depth": 1}).json()
    two = client.get(f"/graph/neighbourhood/Product/{product_id}",
                     params={"depth": 2, "limit": 1000}).json()
    assert one["centre"]["id"] == product_id
    assert {n["label"] for n in one["nodes"]} == {"Brand", "Category", "Attribute"}
    assert all(n["distance"] == 1 for n in one["nodes"])
    assert len(two["nodes"]) > len(one["nodes"]) and not two["truncated"]
    ids_one = {(n["label"], n["id"]) for n in one["nodes"]}
    assert ids_one <= {(n["label"], n["id"]) for n in two["nodes"]}
    assert {n["distance"] for n in two["nodes"]} == {1, 2}
    # every node comes with the hop that reached it, oriented as stored
    assert len(two["relationships"]) == len(two["nodes"])
    made_by = next(r for r in one["relationships"] if r["type"] == "MADE_BY")
    assert made_by["start"] == {"label": "Product", "id": product_id}
    assert made_by["oriented"] and made_by["end"]["label"] == "Brand"

    few = client.get(f"/graph/neighbourhood/Product/{product_id}",
                     params={"depth": 2, "limit": 3}).json()
    assert len(few["nodes"]) == 3 and few["truncated"]
    unknown_id = client.get("/graph/neighbourhood/Brand/no-such-brand")
    assert unknown_id.status_code == 404 and "no-such-brand" in unknown_id.json()["detail"]
    bad_label = client.get("/graph/neighbourhood/Planet/earth")
    assert bad_label.status_code == 422
    assert all(label in bad_label.json()["detail"] for label in NODE_LABELS)
    for depth in (0, 4):
        r = client.get(f"/graph/neighbourhood/Product/{product_id}", params={"depth": depth})
        assert r.status_code == 422 and "'depth'" in r.json()["detail"]


@pytest.mark.neo4j
def test_graph_endpoints_on_neo4j(neo4j_store, slice_data, workspace, search, client) -> None:
    load_dataset("fashion", neo4j_store, slice_data)
    app = create_app(workspace, store=neo4j_store, search=search)
    product_id, _ = photo(search, "Watches")
    brand = client.get(f"/products/{product_id}").json()["brand"]["id"]
    with TestClient(app) as neo:
        ready = neo.get("/ready")
        assert ready.status_code == 200 and ready.json()["store"] == "neo4j"
        assert neo.get(f"/products/{product_id}").json() == client.get(
            f"/products/{product_id}").json()
        for path, params in ((f"/graph/neighbourhood/Product/{product_id}", {"depth": 2}),
                             (f"/graph/neighbourhood/Brand/{brand}", {"depth": 1}),
                             ("/graph/neighbourhood/Category/Footwear", {"depth": 3,
                                                                         "limit": 50})):
            on_neo4j = neo.get(path, params=params)
            assert on_neo4j.status_code == 200
            assert on_neo4j.json() == client.get(path, params=params).json()
        assert neo.get("/products/no-such-product").status_code == 404
        assert neo.get("/graph/neighbourhood/Brand/no-such-brand").status_code == 404
        assert neo.get("/graph/neighbourhood/Planet/earth").status_code == 422


# ---- API key, reload, metrics ---------------------------------------------------------------
def test_api_key_guards_writes_with_compare_digest(client, monkeypatch) -> None:
    import hmac

    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("api.security.hmac.compare_digest", spy)
    missing = client.post("/admin/reload")
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    assert compared == []  # nothing to compare
    wrong = client.post("/admin/reload", headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid API key"}
    assert compared == [(b"nope", API_KEY.encode())]
    right = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
    assert right.status_code == 200 and right.json()["products"] == 150
    assert len(compared) == 2
    # a non-ASCII header is a wrong key (401), not a crash in compare_digest (500)
    odd = client.post("/admin/reload", headers={"X-API-Key": "ключ".encode()})
    assert odd.status_code == 401 and len(compared) == 3


def test_api_key_dependency_is_optional_without_a_key(workspace, search, monkeypatch) -> None:
    monkeypatch.delenv("SHOPGRAPH_API_KEY", raising=False)
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), search=search)
    with TestClient(app) as c:
        assert c.post("/admin/reload").status_code == 200
    monkeypatch.setenv("SHOPGRAPH_API_KEY", "from-env")
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), search=search)
    with TestClient(app) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"X-API-Key": "from-env"}).status_code == 200
    assert callable(require_api_key)  # exported for POST /events


def test_reload_swaps_atomically_while_serving(app, client, monkeypatch) -> None:
    services = app.state.services
    old = services.current
    real_build = api_app.build_search
    building = threading.Event()

    def slow_build(*args, **kwargs):
        building.set()
        built = real_build(*args, **kwargs)
        time.sleep(1.0)  # a long build: requests keep being served by the old version
        return built

    monkeypatch.setattr(api_app, "build_search", slow_build)
    stop = threading.Event()
    statuses: Counter = Counter()
    during_build = []
    lock = threading.Lock()

    def hammer(query: str) -> None:
        while not stop.is_set():
            r = client.get("/search", params={"q": query, "k": 5})
            with lock:
                statuses[r.status_code] += 1
                if building.is_set() and services.current is old:
                    during_build.append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(q,))
               for q in ("black watch", "蓝色牛仔裤", "white tshirt", "casual shoes")]
    for t in threads:
        t.start()
    time.sleep(0.3)
    r = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert r.status_code == 200, r.text
    assert services.current is not old and services.current.search is not old.search
    assert r.json()["artifacts"] == r.json()["previous_artifacts"] == old.version
    assert set(statuses) == {200}, statuses
    assert during_build and set(during_build) == {200}
    # encoders were taken over, not reloaded
    assert services.current.search.text_encoder is old.search.text_encoder


def test_failed_reload_keeps_serving(workspace, search, tmp_path) -> None:
    app = create_app(tmp_path, store=EmbeddedStore(workspace / "graph"), search=search)
    with TestClient(app) as c:
        r = c.post("/admin/reload")
        assert r.status_code == 503 and "still serving" in r.json()["detail"]
        assert c.get("/search", params={"q": "watch"}).status_code == 200


def test_metrics_count_routes_and_statuses(client) -> None:
    client.get("/search", params={"q": "blue jeans", "k": 3})
    client.get("/products/no-such-product")
    client.get("/no/such/path")
    text = client.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.text)}
    counts = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
              for s in families["shopgraph_http_requests"].samples
              if s.name == "shopgraph_http_requests_total"}
    assert counts[("GET", "/search", "200")] >= 1
    assert counts[("GET", "/products/{product_id}", "404")] >= 1
    assert counts[("GET", "unmatched", "404")] >= 1
    assert not any("no-such-product" in route for _, route, _ in counts)  # templates only
    buckets = [s for s in families["shopgraph_http_request_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["route"] == "/search"
               and s.labels["status"] == "200"]
    assert buckets and buckets[-1].labels["le"] == "+Inf" and buckets[-1].value >= 1


class Event(BaseModel):
    """A JSON body like the lead's POST /events will take."""

    user: str
    count: int


def test_json_body_errors_are_422_with_one_sentence(workspace, search) -> None:
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), search=search,
                     api_key=API_KEY)

    @app.post("/test-only/events", dependencies=[ApiKey])
    def events(event: Event) -> dict:
        return {"user": event.user}

    c = TestClient(app)
    key = {"X-API-Key": API_KEY}
    malformed = c.post("/test-only/events", content=b"{not json",
                       headers={**key, "content-type": "application/json"})
    assert malformed.status_code == 422 and "JSON" in malformed.json()["detail"]
    wrong = c.post("/test-only/events", json={"user": "u1", "count": "lots"}, headers=key)
    assert wrong.status_code == 422
    assert wrong.json()["detail"].startswith("body field 'event.count'") or \
        "'count'" in wrong.json()["detail"]
    assert c.post("/test-only/events", json={"user": "u1", "count": 1}).status_code == 401
    assert c.post("/test-only/events", json={"user": "u1", "count": 1},
                  headers=key).json() == {"user": "u1"}


# ---- packaging ------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_api_service() -> None:
    spec = compose()
    assert {"neo4j", "api"} <= set(spec["services"])
    api = spec["services"]["api"]
    assert api["build"] == "."
    assert api["depends_on"] == {"neo4j": {"condition": "service_healthy"}}
    assert "healthcheck" in spec["services"]["neo4j"]
    assert "ports" not in api  # replicas: the lb service publishes :8000 (test_replicas_neo4j)
    env = api["environment"]
    assert env["NEO4J_URI"] == "bolt://neo4j:7687" and env["SHOPGRAPH_STORE"] == "neo4j"
    assert env["SHOPGRAPH_WORKSPACE"] == "/data/workspace"
    assert {"NEO4J_USER", "NEO4J_PASSWORD", "SHOPGRAPH_API_KEY"} <= set(env)
    # the API logs in with the same credentials the neo4j service was created with
    assert env["NEO4J_PASSWORD"] in spec["services"]["neo4j"]["environment"]["NEO4J_AUTH"]
    assert "shopgraph-workspace:/data/workspace" in api["volumes"]
    assert "shopgraph-workspace" in spec["volumes"] and "neo4j-data" in spec["volumes"]
    probe = api["healthcheck"]["test"]
    assert probe[0] == "CMD" and "urllib" in " ".join(probe) and "/health" in " ".join(probe)


def test_compose_healthcheck_probe_runs_against_a_live_server(workspace, search) -> None:
    """The exact probe from the compose file, against uvicorn serving the app."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), search=search)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started
        probe = compose()["services"]["api"]["healthcheck"]["test"]
        code = probe[probe.index("-c") + 1].replace("8000", str(port))
        assert subprocess.run([sys.executable, "-c", code], timeout=10).returncode == 0
        bad = code.replace("/health", "/no-such-endpoint")
        assert subprocess.run([sys.executable, "-c", bad], capture_output=True,
                              timeout=10).returncode != 0
    finally:
        server.should_exit = True
        thread.join(10)


def test_dockerfile_builds_the_api_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert 'CMD ["shopgraph", "serve", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile
    assert "EXPOSE 8000" in dockerfile and "HEALTHCHECK" in dockerfile
    assert "USER shopgraph" in dockerfile  # not root
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:]  # an allow-list after excluding everything
    for path in copied - {"pyproject.toml"}:
        assert f"!{path}/" in ignore or f"!{path}" in ignore, path
    for package in ("kg", "encoders", "recommender", "api"):
        assert package in copied


def test_compose_file_validates_with_docker_compose() -> None:
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    elif os.environ.get("CI") == "true":  # .ci/run installs it: missing there is a failure
        pytest.fail("docker-compose is not installed; .ci/run should have installed it")
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed; "
                    "the YAML checks above still ran")
    r = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
