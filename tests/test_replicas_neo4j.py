"""Replicated serving: N `shopgraph serve` processes over one Neo4j, behind a load balancer.

docker-compose.yml runs the replicas behind nginx (`docker compose up --scale api=3`); Docker
is not available to the tests, so the fast tests here check the compose file and
deploy/nginx.conf for what replication needs, and the Neo4j test runs the same thing on one
machine: 3 separate `shopgraph serve --store neo4j` processes with SHOPGRAPH_FOLLOW_EVENTS=1
(what the compose file sets), a tiny Python round-robin over their ports standing in for
nginx. An event written through any replica must reach every replica's recommendations
within 1 s (each follows the store's event log every EVENT_POLL_S = 0.2 s).
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from api.app import EVENT_POLL_S
from kg.neo4j_store import Neo4jSettings, Neo4jStore
from recommender.training import train_recommender
from tests.serve_process import ROOT, free_port, get, post, start_server, stop_server
from tests.shop_graph import PURCHASES, small_shop
from tests.test_api_neo4j_faults import NO_GNN

REPLICAS = 3
PROPAGATION_LIMIT_S = 1.0
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


# ---- the compose file and the load balancer's config ----------------------------------------
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_api_replicas_behind_the_lb() -> None:
    services = compose()["services"]
    api, lb = services["api"], services["lb"]
    # replicas cannot share a host port: only the balancer publishes one
    assert "ports" not in api and "container_name" not in api
    assert [str(p) for p in api["expose"]] == ["8000"]
    assert api["deploy"]["replicas"] == "${API_REPLICAS:-1}"
    assert api["environment"]["SHOPGRAPH_FOLLOW_EVENTS"] == "1"
    assert api["environment"]["SHOPGRAPH_STORE"] == "neo4j"  # one store shared by all
    assert lb["image"].startswith("nginx:") and lb["ports"] == ["8000:8000"]
    assert lb["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    probe = " ".join(lb["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health" in probe
    published = [p for name, s in services.items() if name != "lb" for p in s.get("ports", [])]
    assert not any(str(p).split(":")[0] == "8000" for p in published)


def test_nginx_proxies_to_every_api_replica_through_dockers_dns() -> None:
    conf = re.sub(r"#.*", "", NGINX_CONF.read_text())  # what nginx reads, comments aside
    assert re.search(r"\bresolver\s+127\.0\.0\.11\s+valid=5s\b", conf)
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    assert upstream, "an upstream block"
    name, body = upstream.groups()
    # the service name, re-resolved (`resolve` needs a shared zone): new replicas join
    assert re.search(r"^\s*server\s+api:8000\s+resolve\b", body, re.M)
    assert re.search(r"^\s*zone\s+\w+", body, re.M)
    listen = re.search(r"listen\s+(\d+)\s*;", conf)
    assert listen and listen.group(1) == "8000"
    assert re.search(rf"proxy_pass\s+http://{name}\s*;", conf)
    limit = re.search(r"client_max_body_size\s+(\d+)m\s*;", conf)  # image uploads pass
    assert limit and int(limit.group(1)) * 2**20 > int(
        compose()["services"]["api"]["environment"]["SHOPGRAPH_MAX_UPLOAD_BYTES"])


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """`nginx -t` where nginx is installed (not in CI). nginx before 1.27.3 lacks `resolve`
    and cannot resolve `api` outside compose, so that one line is swapped for a loopback
    server; every other directive is checked as written."""
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed; the structural checks above still ran")
    conf = NGINX_CONF.read_text()
    local = re.sub(r"server\s+api:8000\s+resolve", "server 127.0.0.1:8000", conf)
    assert local != conf
    (tmp_path / "nginx.conf").write_text(local.replace("/tmp/nginx.pid",
                                                       str(tmp_path / "nginx.pid")))
    r = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


# ---- 3 replicas over the real Neo4j ---------------------------------------------------------
class RoundRobin:
    """Stands in for nginx: each request goes to the next replica's port in turn."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = itertools.cycle(ports)
        self._lock = threading.Lock()

    def post(self, path: str, body: object) -> tuple[int, int, dict]:
        """(port it went to, status, body)."""
        with self._lock:
            port = next(self._ports)
        return (port, *post(port, path, body))

    def get(self, path: str) -> dict:
        with self._lock:
            port = next(self._ports)
        return get(port, path)


def recommended(port: int, user: str) -> list[str]:
    return [i["id"] for i in get(port, f"/users/{user}/recommendations?k=5")["items"]]


def seconds_until_gone(port: int, user: str, product: str, since: float,
                       deadline_s: float = 10.0) -> float | None:
    """Seconds from `since` until `product` leaves `user`'s recommendations on `port`
    (a purchased product is no longer recommended); None if it never does in time."""
    while time.perf_counter() - since < deadline_s:
        if product not in recommended(port, user):
            return time.perf_counter() - since
        time.sleep(0.01)
    return None


@pytest.fixture
def trained_on_neo4j(neo4j_store: Neo4jStore, tmp_path: Path) -> Path:
    """The small shop in the (cleared) session Neo4j, a recommender trained from it."""
    neo4j_store.load(small_shop())
    workspace = tmp_path / "ws"
    train_recommender(neo4j_store, workspace, NO_GNN, log=lambda _: None)
    return workspace


@pytest.mark.neo4j
def test_events_through_any_replica_reach_every_replica_within_1s(
        trained_on_neo4j: Path, neo4j_store: Neo4jStore, neo4j_settings: Neo4jSettings,
        tmp_path: Path) -> None:
    env = {"NEO4J_URI": neo4j_settings.uri, "NEO4J_USER": neo4j_settings.user,
           "NEO4J_PASSWORD": neo4j_settings.password, "SHOPGRAPH_FOLLOW_EVENTS": "1"}
    ports = [free_port() for _ in range(REPLICAS)]
    with ThreadPoolExecutor(REPLICAS) as pool:  # start them side by side
        starting = [pool.submit(start_server, trained_on_neo4j, port, store="neo4j", env=env,
                                log=tmp_path / f"replica{i}.log")
                    for i, port in enumerate(ports)]
    servers, failures = [], []
    for future in starting:
        try:
            servers.append(future.result())
        except AssertionError as exc:
            failures.append(exc)
    try:
        assert not failures, failures
        assert len({get(port, "/ready")["pid"] for port in ports}) == REPLICAS
        lb = RoundRobin(ports)
        delays: list[float] = []
        users = sorted(PURCHASES)[:REPLICAS]  # a fresh shopper per write: one through each
        for writer, user in enumerate(users):
            before = {port: recommended(port, user) for port in ports}
            top = before[ports[0]][0]
            assert all(items[0] == top for items in before.values()), before  # same model
            sent = time.perf_counter()
            port, status, body = lb.post("/events", {"user_id": user, "product_id": top,
                                                     "kind": "purchase"})
            written = time.perf_counter()  # acknowledged: durable in Neo4j from here on
            assert port == ports[writer]  # the round-robin sent write i to replica i
            assert status == 201 and body["status"] == "recorded", body
            with ThreadPoolExecutor(REPLICAS) as pool:  # watch all replicas at once
                watching = [pool.submit(seconds_until_gone, p, user, top, written)
                            for p in ports]
                seen = [w.result() for w in watching]
            print(f"write {writer} via replica {writer} ({user} bought {top}, POST took "
                  f"{written - sent:.3f} s), seen after the 201 on: "
                  + ", ".join(f"replica {i} {s if s is None else f'{s:.3f}'} s"
                              for i, s in enumerate(seen)))
            assert None not in seen, f"replicas {seen} never showed {user}'s purchase"
            delays += [s for i, s in enumerate(seen) if i != writer]
            # recorded once, by its writer: the followers apply it, they do not write it again
            assert int(neo4j_store.interactions(user, top, "purchase")["count"].iloc[0]) == 1
            for _ in ports:  # and reads through the round-robin agree, whichever replica
                items = lb.get(f"/users/{user}/recommendations?k=5")["items"]
                assert top not in [i["id"] for i in items]
        print(f"propagation to the other replicas: max {max(delays):.3f} s, "
              f"mean {sum(delays) / len(delays):.3f} s over {len(delays)} "
              f"(poll every {EVENT_POLL_S:g} s)")
        assert max(delays) <= PROPAGATION_LIMIT_S, delays
    finally:
        for server in servers:
            stop_server(server)
        for i in range(REPLICAS):  # shown by pytest when the test fails
            log = tmp_path / f"replica{i}.log"
            print(f"--- replica {i}:\n{log.read_text() if log.exists() else '(no log)'}")
