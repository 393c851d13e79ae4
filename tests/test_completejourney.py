"""Complete Journey end to end: every product, household and transaction row accounted for."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import kg
from kg.embedded import EmbeddedStore
from kg.importers import load_dataset
from kg.importers.completejourney import default_dir
from kg.schema import DataError


@pytest.fixture(scope="module")
def raw() -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(default_dir() / f"{name}.parquet")
            for name in ("products", "demographics", "transactions")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("cj")


@pytest.fixture(scope="module")
def store(workspace) -> EmbeddedStore:
    store = EmbeddedStore(workspace / "graph")
    load_dataset("completejourney", store)
    return store


def test_every_row_accounted_for(store: EmbeddedStore, raw) -> None:
    products, transactions = raw["products"], raw["transactions"]
    assert len(products) == 92_331 and len(transactions) == 1_469_307
    counts = store.counts()
    orphans = set(transactions["product_id"]) - set(products["product_id"])
    assert counts["nodes"]["Product"] == 92_331 + len(orphans)
    assert counts["nodes"]["User"] == 2_469
    assert counts["relationships"]["MADE_BY"] == 92_331
    edges = store.interactions()
    assert len(edges) == transactions.groupby(["household_id", "product_id"]).ngroups
    assert int(edges["count"].sum()) == len(transactions)
    assert int(edges["quantity"].sum()) == int(transactions["quantity"].sum())
    assert float(edges["sales_value"].sum()) == pytest.approx(
        transactions["sales_value"].sum(), rel=1e-6)
    assert set(edges["kind"]) == {"purchase"}


def test_aggregated_edge_matches_its_rows(store: EmbeddedStore, raw) -> None:
    tx = raw["transactions"]
    pair = tx.groupby(["household_id", "product_id"]).size().idxmax()
    rows = tx[(tx["household_id"] == pair[0]) & (tx["product_id"] == pair[1])]
    edge = store.interactions(user_id=str(pair[0]), product_id=str(pair[1])).iloc[0]
    assert edge["count"] == len(rows) > 1
    last = int(rows["transaction_timestamp"].max().timestamp())
    assert edge["ts"] == last


def test_catalog_mapping(store: EmbeddedStore, raw) -> None:
    first = raw["products"].iloc[0]
    node = store.get_node(kg.PRODUCT, str(first["product_id"]))
    assert node is not None and first["product_type"] in node["title"]
    near = {(n.label, n.id) for n in store.neighbours(kg.PRODUCT, str(first["product_id"]))}
    assert (kg.BRAND, f"manufacturer:{first['manufacturer_id']}") in near
    leaf = f"{first['department']} > {first['product_category']} > {first['product_type']}"
    assert (kg.CATEGORY, leaf) in near
    assert (kg.ATTRIBUTE, f"brand_type={first['brand']}") in near
    demo = raw["demographics"].iloc[0]
    user = store.get_node(kg.USER, str(demo["household_id"]))
    assert user["income"] == demo["income"]
    assert store.counts()["nodes"]["Category"] > 3_000


def test_reload_gives_identical_counts(workspace, store: EmbeddedStore) -> None:
    before = store.counts()
    again = EmbeddedStore(workspace / "graph")
    load_dataset("completejourney", again)
    assert again.counts() == before


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(DataError, match="products.parquet"):
        load_dataset("completejourney", EmbeddedStore(tmp_path / "g"), data_dir=tmp_path)


def test_cli_stats_json(workspace, store: EmbeddedStore) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "stats", "--json", "--workspace", str(workspace)],
        capture_output=True, text=True, check=True,
    )
    stats = json.loads(out.stdout)
    assert stats == store.counts()
    assert stats["nodes"]["User"] == 2_469
