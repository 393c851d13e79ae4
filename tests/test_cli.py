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


@pytest.fixture(scope="module")
def trained_shop(tmp_path_factory) -> Path:
    """The small shop graph, trained through `shopgraph train` (no content, no GNN)."""
    from kg.embedded import EmbeddedStore
    from tests.shop_graph import small_shop

    ws = tmp_path_factory.mktemp("cli-shop")
    with EmbeddedStore(ws / "graph") as store:
        store.load(small_shop())
    holdout = ws / "holdout.csv"
    holdout.write_text("user_id,product_id\nu1,p5\n")
    out = shopgraph("train", "--workspace", str(ws), "--no-content", "--no-gnn",
                    "--holdout", str(holdout), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)["recommender"]
    assert summary["held_out"] == 1 and summary["interactions"] == 29
    return ws


def test_recommend_and_related(trained_shop: Path) -> None:
    ws = str(trained_shop)
    out = shopgraph("recommend", "u1", "--k", "3", "--json", "--workspace", ws)
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)["items"]
    assert len(items) == 3 and all(item["reasons"] for item in items)
    assert not {"p1", "p2", "p3", "p4"} & {item["id"] for item in items}  # u1's history
    text = shopgraph("recommend", "u1", "--explain", "--workspace", ws)
    assert text.returncode == 0 and "       - " in text.stdout
    related = shopgraph("related", "p1", "--json", "--workspace", ws)
    assert related.returncode == 0 and json.loads(related.stdout)["items"]


def test_recommend_batch_and_errors(trained_shop: Path, tmp_path) -> None:
    ws = str(trained_shop)
    users = tmp_path / "users.txt"
    users.write_text("u1\n\nnobody\nu4\n")
    out = shopgraph("recommend", "--users", str(users), "--k", "2", "--workspace", ws)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["user"] for line in lines] == ["u1", "nobody", "u4"]
    assert lines[1]["error"] == "unknown user 'nobody'" and len(lines[2]["items"]) == 2
    bad = shopgraph("recommend", "nobody", "--workspace", ws)
    assert bad.returncode == 2 and bad.stderr.strip() == "shopgraph: error: unknown user 'nobody'"
    empty = shopgraph("recommend", "u1", "--workspace", str(tmp_path / "none"))
    assert empty.returncode == 2 and "shopgraph train" in empty.stderr


def test_evaluate_prints_every_model_on_the_split() -> None:
    out = shopgraph("evaluate", "ml100k-kg", "--models", "popularity,itemknn", "--json",
                    "--quiet")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["models"]) == {"popularity", "itemknn"}
    assert report["train"] == 80_367 and report["test"] == 19_633
    itemknn = report["models"]["itemknn"]["metrics"]
    assert itemknn["recall@20"] > report["models"]["popularity"]["metrics"]["recall@20"]
