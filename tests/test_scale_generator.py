"""The scale benchmark's synthetic shop: seeded, reproducible, and loadable by the importer."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

from synthetic_shop import ShopShape, generate, parse_size  # noqa: E402

FILES = ("products.csv", "users.csv", "interactions.csv", "shape.json")


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    generate(tmp_path / "a", 5000, seed=3)
    generate(tmp_path / "b", 5000, seed=3)
    generate(tmp_path / "c", 5000, seed=4)
    for name in FILES:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    assert not filecmp.cmp(tmp_path / "a" / "interactions.csv",
                           tmp_path / "c" / "interactions.csv", shallow=False)


def test_shape_grows_with_the_event_count_and_popularity_is_long_tailed(tmp_path: Path
                                                                        ) -> None:
    info = generate(tmp_path, 20_000, seed=0)
    shape = ShopShape.for_size(20_000)
    events = pd.read_csv(tmp_path / "interactions.csv")
    products = pd.read_csv(tmp_path / "products.csv")
    assert len(events) == 20_000 == info["interactions"]
    assert len(products) == shape.products == 800
    assert events["user_id"].nunique() == shape.users == 50
    assert set(events["kind"]) <= {"purchase", "view", "cart"}
    assert events["timestamp"].between(1_672_531_200, 1_672_531_200 + 2 * 365 * 86_400).all()
    counts = events["product_id"].value_counts()
    assert counts.iloc[:80].sum() > 0.3 * len(events)  # top 10% of items: a large share
    assert products["category_path"].str.count(" > ").eq(2).all()
    assert ShopShape.for_size(3_000_000).products == 3 * ShopShape.for_size(1_000_000).products


def test_the_generic_importer_loads_it(tmp_path: Path) -> None:
    from kg.embedded import EmbeddedStore
    from kg.importers import load_dataset

    generate(tmp_path / "shop", 2000, seed=1)
    store = EmbeddedStore(tmp_path / "graph")
    load_dataset("generic", store, tmp_path / "shop")
    counts = store.counts()
    store.close()
    assert counts["nodes"]["Product"] == 80
    assert counts["nodes"]["User"] == 5
    assert counts["relationships"]["INTERACTED"] > 0


@pytest.mark.parametrize("text, value", [("1M", 1_000_000), ("300k", 300_000),
                                         ("2500", 2500), ("1.5M", 1_500_000)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_bad_sizes_are_refused() -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")
    with pytest.raises(ValueError):
        ShopShape.for_size(10)
