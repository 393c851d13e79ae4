"""Search without encoders: a lexical (BM25 + graph) build on the real 150-product fashion slice.

This is what `shopgraph train --no-content` leaves for `make demo`: no text or image vectors,
yet text search (English and Chinese), filters, the API's /search and personalisation work, an
image query is refused with a clear error, and the GNN never takes the build as features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from kg.embedded import EmbeddedStore
from kg.export import export_graph
from kg.importers import load_dataset
from recommender.content import (
    FULL,
    LEXICAL,
    VECTOR_FILES,
    ContentArtifacts,
    NoVectorsError,
    build_lexical,
    content_dir,
    content_mode,
)
from recommender.search import ProductSearch
from recommender.training import _content_features
from tests.fashion_slice import requires_fashion, write_slice

pytestmark = requires_fashion
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slice_data(tmp_path_factory) -> Path:
    return write_slice(tmp_path_factory.mktemp("fashion-slice"))


@pytest.fixture(scope="module")
def workspace(slice_data, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("lexical-ws")
    store = EmbeddedStore(ws / "graph")
    load_dataset("fashion", store, slice_data)
    build_lexical(store, ws)
    return ws


@pytest.fixture(scope="module")
def search(workspace) -> ProductSearch:
    return ProductSearch.load(workspace)


def row(search: ProductSearch, product_id: str) -> pd.Series:
    return search.catalog[search.catalog["id"] == product_id].iloc[0]


def kind(search: ProductSearch, product_id: str) -> str:
    return row(search, product_id)["category"].split(" > ")[-1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SHOPGRAPH_STORE"}
    return subprocess.run([sys.executable, "-m", "api.cli", *args], capture_output=True,
                          text=True, check=False, cwd=ROOT, env=env)


# ---- the build ------------------------------------------------------------------------------
def test_build_writes_a_lexical_build_without_vectors(workspace) -> None:
    directory = content_dir(workspace)
    assert content_mode(workspace) == LEXICAL
    assert json.loads((directory / "meta.json").read_text())["mode"] == LEXICAL
    assert not any((directory / name).exists() for name in (*VECTOR_FILES, "joint"))
    artifacts = ContentArtifacts.load(directory)
    assert artifacts.lexical and len(artifacts.catalog) == len(artifacts.documents) == 150
    assert artifacts.text_vectors is None and artifacts.joint is None
    assert "Watch" in " ".join(artifacts.documents)
    with pytest.raises(NoVectorsError, match="without --no-content"):
        artifacts.content_vectors()


def test_gnn_takes_no_features_from_a_lexical_build(workspace) -> None:
    snapshot = export_graph(EmbeddedStore(workspace / "graph"))
    artifacts = ContentArtifacts.load(content_dir(workspace))
    assert artifacts.ids == list(snapshot.ids["Product"])  # same catalog: only the mode decides
    assert _content_features(workspace, snapshot) is None


# ---- text search ----------------------------------------------------------------------------
def test_english_query_ranks_black_watches_first(search) -> None:
    result = search.search("black watch", k=5)
    assert result.understood["concepts"] == [["colour", "Black"], ["category", "Watches"]]
    assert all(kind(search, h.id) == "Watches" for h in result.hits)
    assert all(row(search, h.id)["colour"] == "Black" for h in result.hits)
    assert all(set(h.sources) == {"bm25", "graph"} for h in result.hits)
    assert search.text_index is None and search.joint_index is None


def test_chinese_query_matches_its_english_twin(search) -> None:
    english = [h.id for h in search.search("Men Black Sports Shoes", k=10).hits]
    chinese = search.search("男士黑色运动鞋", k=10)
    assert chinese.understood["english"] == "Men Black Sports Shoes"
    assert len(set(english) & {h.id for h in chinese.hits}) >= 8
    top = row(search, chinese.hits[0].id)
    assert (kind(search, top["id"]), top["colour"], top["gender"]) == ("Sports Shoes", "Black",
                                                                        "Men")


def test_filters(search) -> None:
    hits = search.search("black", k=20, category="Footwear").hits
    assert hits and all(kind(search, h.id).endswith("Shoes") for h in hits)
    hits = search.search("shoes", k=10, brand="puma").hits
    assert len(hits) == 10 and all(row(search, h.id)["brand"] == "Puma" for h in hits)
    assert search.search("watch", brand="No Such Brand").hits == []
    # nothing in the words or the graph matches: no hits, rather than arbitrary zero scores
    assert search.search("火星 zxqv", k=5).hits == []


def test_vector_queries_raise_a_clear_error(search) -> None:
    photo = search.catalog["image"].iloc[0]
    with pytest.raises(NoVectorsError, match="image search needs the content vectors"):
        search.search(image=photo)
    with pytest.raises(NoVectorsError, match="without --no-content"):
        search.search("black watch", image=photo)
    with pytest.raises(NoVectorsError, match="need the content vectors"):
        search.search("black watch", sources=("text", "image"))
    with pytest.raises(ValueError, match="text query, an image"):
        search.search("  ")


def test_no_encoder_is_ever_loaded(search) -> None:
    for query in ("black watch", "蓝色牛仔裤", "white tshirt", "casual shoes"):
        assert search.search(query, k=3).hits
    with pytest.raises(NoVectorsError):
        search.search(image=search.catalog["image"].iloc[0])
    assert search.text_encoder is None and search.image_encoder is None  # lazy, and stays so
    assert search._text_encoder is None and search._image_encoder is None


# ---- the API and the command line -----------------------------------------------------------
def test_api_searches_text_and_refuses_photos(workspace, search) -> None:
    reverse = lambda user, hits: list(reversed(hits))  # noqa: E731
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"),
                     load_recommender=False, personaliser=reverse)
    with TestClient(app) as client:
        assert client.get("/ready").json()["products"] == 150
        r = client.get("/search", params={"q": "黑色手表", "k": 5})
        assert r.status_code == 200, r.text
        ids = [h["id"] for h in r.json()["hits"]]
        assert len(ids) == 5 and all(kind(search, i) == "Watches" for i in ids)
        mine = client.get("/search", params={"q": "黑色手表", "k": 5, "user": "u1"}).json()
        assert mine["personalised"] and [h["id"] for h in mine["hits"]] == ids[::-1]
        photo = Path(search.catalog["image"].iloc[0]).read_bytes()
        r = client.post("/search/image", files={"image": ("p.jpg", photo, "image/jpeg")})
        assert r.status_code == 503, r.text
        assert "image search needs the content vectors" in r.json()["detail"]
        assert "without --no-content" in r.json()["detail"]
        assert client.post("/admin/reload").status_code == 200  # reload loads no encoder either
        loaded = app.state.services.current.search
        assert loaded.lexical and loaded._text_encoder is None and loaded._image_encoder is None
        assert client.get("/search", params={"q": "black watch"}).status_code == 200


def test_cli_search_text_and_photo(workspace, search) -> None:
    found = cli("search", "black watch", "--json", "--k", "3", "--workspace", str(workspace))
    assert found.returncode == 0, found.stderr
    assert [kind(search, h["id"]) for h in json.loads(found.stdout)["hits"]] == ["Watches"] * 3
    photo = cli("search", "--image", search.catalog["image"].iloc[0],
                "--workspace", str(workspace))
    assert photo.returncode == 2 and "without --no-content" in photo.stderr


def test_cli_train_no_content_builds_lexical_search(slice_data, tmp_path) -> None:
    ws = str(tmp_path / "ws")
    assert cli("load", "fashion", "--data-dir", str(slice_data), "--workspace", ws,
               "--quiet").returncode == 0
    trained = cli("train", "--no-content", "--no-gnn", "--workspace", ws)
    assert trained.returncode == 0, trained.stderr
    assert "lexical search artifacts for 150 products" in trained.stdout
    assert "no vectors: run without --no-content" in trained.stdout
    assert content_mode(Path(ws)) == LEXICAL
    assert ProductSearch.load(Path(ws)).search("white tshirt", k=1).hits


def fake_full_build(workspace: Path) -> ContentArtifacts:
    """A full build with random vectors: the CLI's choices depend on the mode, not on E5."""
    from encoders.joint import JointSpace

    lexical = ContentArtifacts.load(content_dir(workspace))
    n, rng = len(lexical.catalog), np.random.default_rng(0)
    joint = JointSpace(8, 16)
    full = ContentArtifacts(
        catalog=lexical.catalog, documents=lexical.documents, attributes=lexical.attributes,
        categories=lexical.categories, text_vectors=rng.normal(size=(n, 16)).astype(np.float32),
        image_features=rng.normal(size=(n, 8)).astype(np.float32),
        has_image=np.ones(n, dtype=bool), joint=joint,
        joint_vectors=rng.normal(size=(n, joint.config.dim)).astype(np.float32),
        meta={"products": n, "with_image": n, "image_errors": 0, "joint": {}, "seconds": 0},
    )
    full.save(content_dir(workspace))
    return full


def test_no_content_keeps_a_full_build_and_a_full_train_replaces_a_lexical_one(
        workspace, tmp_path, monkeypatch) -> None:
    import shutil

    import recommender.content
    from api.cli import main

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    full = fake_full_build(ws)
    assert content_mode(ws) == FULL
    kept = cli("train", "--no-content", "--no-gnn", "--workspace", str(ws))
    assert kept.returncode == 0, kept.stderr
    assert "kept the full content artifacts" in kept.stdout
    again = ContentArtifacts.load(content_dir(ws))
    assert not again.lexical and np.array_equal(again.text_vectors, full.text_vectors)

    # and the other way: a plain train over a lexical build encodes (stubbed here)
    build_lexical(EmbeddedStore(ws / "graph"), ws)
    calls: list[Path] = []
    monkeypatch.setattr(recommender.content, "build_content",
                        lambda store, workspace, **kw: calls.append(workspace) or full)
    monkeypatch.delenv("SHOPGRAPH_STORE", raising=False)
    assert main(["train", "--no-gnn", "--quiet", "--workspace", str(ws)]) == 0
    assert calls == [ws]
