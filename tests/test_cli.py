"""The `shopgraph` command line as a user runs it: real processes, real stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.neo4j_server import Neo4jServer


def shopgraph(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "api.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, check=False)


def write_catalog(directory: Path, interactions: str) -> Path:
    directory.mkdir()
    (directory / "products.csv").write_text(
        "id,title,brand,category_path,price,colour\n"
        "p1,Red dress,Acme,Apparel > Dresses,19.5,Red\n"
        "p2,Black shoes,Acme,Apparel > Shoes,49,Black\n")
    (directory / "users.csv").write_text("id,segment\nu1,new\n")
    (directory / "interactions.csv").write_text(
        "user_id,product_id,kind,timestamp\n" + interactions)
    return directory


def test_load_then_stats(tmp_path) -> None:
    data = write_catalog(tmp_path / "shop", "u1,p1,view,2024-01-01T10:00:00Z\n")
    ws = str(tmp_path / "ws")
    out = shopgraph("load", "generic", "--data-dir", str(data), "--workspace", ws, "--json",
                    "--quiet")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["store_counts"]["nodes"]["Product"] == 2
    stats = json.loads(shopgraph("stats", "--json", "--workspace", ws).stdout)
    assert stats["relationships"] == {"MADE_BY": 2, "IN_CATEGORY": 2, "SUBCATEGORY_OF": 2,
                                      "HAS_ATTRIBUTE": 2, "INTERACTED": 1, "SAME_AS": 0,
                                      "REL": 0}
    human = shopgraph("stats", "--workspace", ws)
    assert "Product" in human.stdout and human.returncode == 0


def test_bad_input_is_one_clear_line_and_changes_nothing(tmp_path) -> None:
    ws = str(tmp_path / "ws")
    good = write_catalog(tmp_path / "good", "u1,p1,view,1700000000\n")
    assert shopgraph("load", "generic", "--data-dir", str(good), "--workspace", ws,
                     "--quiet").returncode == 0
    before = shopgraph("stats", "--json", "--workspace", ws).stdout
    bad = write_catalog(tmp_path / "bad", "u1,p1,view,1700000000\nu1,p9,cart,1700000001\n")
    out = shopgraph("load", "generic", "--data-dir", str(bad), "--workspace", ws, "--quiet")
    assert out.returncode == 2
    assert "interactions.csv, line 3, field 'product_id'" in out.stderr
    assert "Traceback" not in out.stderr
    assert shopgraph("stats", "--json", "--workspace", ws).stdout == before


def test_unknown_dataset_and_missing_dir(tmp_path) -> None:
    out = shopgraph("load", "nosuch", "--workspace", str(tmp_path))
    assert out.returncode == 2 and "unknown dataset 'nosuch'" in out.stderr
    out = shopgraph("load", "generic", "--data-dir", str(tmp_path / "nope"),
                    "--workspace", str(tmp_path))
    assert out.returncode == 2 and "nope" in out.stderr


@pytest.mark.neo4j
def test_neo4j_store_from_environment(neo4j_server: Neo4jServer, tmp_path) -> None:
    """ml100k-kg through the CLI into Neo4j gives the same counts as the embedded store."""
    env = {"NEO4J_URI": neo4j_server.uri, "NEO4J_USER": neo4j_server.user,
           "NEO4J_PASSWORD": neo4j_server.password}
    from kg.neo4j_store import Neo4jSettings, Neo4jStore

    with Neo4jStore(Neo4jSettings(neo4j_server.uri, neo4j_server.user,
                                  neo4j_server.password)) as store:
        store.clear()
    out = shopgraph("load", "ml100k-kg", "--store", "neo4j", "--quiet", "--json", env=env)
    assert out.returncode == 0, out.stderr
    neo = json.loads(shopgraph("stats", "--store", "neo4j", "--json", env=env).stdout)
    ws = str(tmp_path / "ws")
    assert shopgraph("load", "ml100k-kg", "--workspace", ws, "--quiet").returncode == 0
    assert json.loads(shopgraph("stats", "--json", "--workspace", ws).stdout) == neo
    assert neo["relationships"]["INTERACTED"] == 100_000
    wrong = shopgraph("stats", "--store", "neo4j", env={**env, "NEO4J_PASSWORD": "wrong-pw"})
    assert wrong.returncode == 2 and "cannot reach Neo4j" in wrong.stderr


def test_docker_compose_runs_neo4j_with_healthcheck_and_volume() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).parents[1] / "docker-compose.yml").read_text())
    neo4j = compose["services"]["neo4j"]
    assert neo4j["image"] == "neo4j:5.26-community"
    assert {"7474:7474", "7687:7687"} <= set(neo4j["ports"])
    assert "cypher-shell" in " ".join(neo4j["healthcheck"]["test"])
    assert "neo4j-data:/data" in neo4j["volumes"] and "neo4j-data" in compose["volumes"]
    assert "NEO4J_PASSWORD" in neo4j["environment"]["NEO4J_AUTH"]
