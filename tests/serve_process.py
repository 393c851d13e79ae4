"""Real `shopgraph serve` processes for tests, and the small HTTP calls they make to them.

Shared by the event tests (embedded store, `--workers N`) and the replica tests (Neo4j, one
process per replica), so both start servers and talk to them the same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "events-key"
KEY = {"X-API-Key": API_KEY}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ws: Path, port: int, workers: int = 1, store: str = "embedded",
                 env: dict[str, str] | None = None, ready_s: float = 120,
                 log: Path | None = None) -> subprocess.Popen:
    """`shopgraph serve` over `ws` on `port` in its own process group (stop it with
    `stop_server`); returns once /ready reports a loaded recommender. `env` adds to the
    environment (Neo4j credentials, SHOPGRAPH_FOLLOW_EVENTS); `log` keeps its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "SHOPGRAPH_API_KEY": API_KEY,
                **(env or {})}
    out = subprocess.DEVNULL if log is None else log.open("ab")
    try:
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workspace",
             str(ws), "--store", store, "--workers", str(workers)],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    finally:
        if log is not None:
            out.close()  # the child holds its own copy
    deadline = time.time() + ready_s
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                if json.loads(r.read())["recommender"]:
                    return server
        except OSError:
            time.sleep(0.3)
    stop_server(server)
    raise AssertionError(f"the server on port {port} did not become ready "
                         f"(exit code {server.poll()})")


def stop_server(server: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the server's process group (uvicorn's workers too), SIGKILL if it lingers."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout)
    except ProcessLookupError:
        pass


def post(port: int, path: str, body: object, timeout: float = 10) -> tuple[int, dict]:
    """POST JSON with the API key; (status, parsed body), error statuses included."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", **KEY})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(port: int, path: str, timeout: float = 10) -> dict:
    """GET and parse JSON; an error status raises."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())
