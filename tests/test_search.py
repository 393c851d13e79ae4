"""Multimodal search end to end on a 150-product slice of the real fashion catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoders.joint import JointConfig
from kg.embedded import EmbeddedStore
from recommender.content import ContentArtifacts, build_content, content_dir
from recommender.search import ProductSearch
from tests.fashion_slice import build_workspace, requires_fashion, write_slice

pytestmark = requires_fashion


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    data = write_slice(tmp_path_factory.mktemp("fashion-slice"))
    return build_workspace(data, tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def search(workspace) -> ProductSearch:
    return ProductSearch.load(workspace)


def attrs(search: ProductSearch, product_id: str) -> dict:
    row = search.catalog[search.catalog["id"] == product_id].iloc[0]
    return {"type": row["category"].split(" > ")[-1], "colour": row["colour"],
            "gender": row["gender"]}


def test_artifacts_saved_and_joint_space_learned(workspace) -> None:
    artifacts = ContentArtifacts.load(content_dir(workspace))
    assert len(artifacts.catalog) == 150 and int(artifacts.has_image.sum()) == 150
    joint = artifacts.meta["joint"]
    assert joint["pairs_train"] + joint["pairs_heldout"] == 150
    assert artifacts.content_vectors().shape == (150, 384 + 256)
    # trained towers retrieve the right photo from a title far better than random ones
    trained, random = joint["heldout"], joint["random_projection"]
    assert trained["text_to_image_R@5"] > random["text_to_image_R@5"] + 0.1


def test_english_query_finds_matching_products(search) -> None:
    result = search.search("Men Black Sports Shoes", k=5)
    assert result.understood["concepts"] == [["gender", "Men"], ["colour", "Black"],
                                             ["category", "Sports Shoes"]]
    top = [attrs(search, h.id) for h in result.hits]
    assert all(a["type"] == "Sports Shoes" for a in top)
    assert top[0]["colour"] == "Black" and top[0]["gender"] == "Men"


def test_chinese_query_matches_its_english_twin(search) -> None:
    english = {h.id for h in search.search("Men Black Sports Shoes", k=10).hits}
    chinese = search.search("男士黑色运动鞋", k=10)
    assert chinese.understood["english"] == "Men Black Sports Shoes"
    assert len(english & {h.id for h in chinese.hits}) >= 8


def test_image_query_finds_itself_and_same_type(search) -> None:
    product = search.catalog[search.catalog["category"].str.endswith("Watches")].iloc[0]
    result = search.search(image=product["image"], k=10)
    ids = [h.id for h in result.hits]
    assert product["id"] in ids[:3]
    assert result.understood["image_type"] == "Watches"
    assert sum(attrs(search, i)["type"] == "Watches" for i in ids) >= 8


def test_text_and_image_together(search) -> None:
    shirt = search.catalog[search.catalog["category"].str.endswith("> Shirts")].iloc[0]
    colour = shirt["colour"]
    result = search.search(f"{colour} shirt", image=shirt["image"], k=5)
    assert result.hits[0].id == shirt["id"]
    assert {"bm25", "text", "image", "graph"} <= set(result.hits[0].sources)


def test_filters_and_errors(search) -> None:
    hits = search.search("black", k=20, category="Footwear").hits
    assert hits and all(attrs(search, h.id)["type"].endswith("Shoes") for h in hits)
    with pytest.raises(ValueError, match="text query, an image"):
        search.search("  ")
    with pytest.raises(ValueError, match="unknown sources"):
        search.search("black", sources=("telepathy",))


def test_rebuild_encodes_nothing_new(workspace) -> None:
    cache = workspace / "cache" / "embeddings"
    before = sorted(p.name for p in cache.rglob("*") if p.is_file())
    store = EmbeddedStore(workspace / "graph")
    again = build_content(store, workspace, joint_config=JointConfig(epochs=15, batch_size=64))
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == before
    first = ContentArtifacts.load(content_dir(workspace))
    assert np.allclose(first.text_vectors, again.text_vectors)


def test_cli_search_single_and_batch(workspace, tmp_path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "api.cli", "search", *args,
                               "--workspace", str(workspace)],
                              capture_output=True, text=True, check=False)

    one = run("黑色运动鞋", "--json", "--k", "3")
    assert one.returncode == 0, one.stderr
    assert len(json.loads(one.stdout)["hits"]) == 3
    queries = tmp_path / "queries.txt"
    queries.write_text("blue jeans\n\n白色T恤\nwatch\n", encoding="utf-8")
    batch = run("--queries", str(queries), "--json")
    lines = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [r["query"] for r in lines] == ["blue jeans", "白色T恤", "watch"]
    missing = run("--image", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2 and "nope.jpg" in missing.stderr
