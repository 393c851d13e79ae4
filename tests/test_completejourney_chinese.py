"""Chinese search over Complete Journey: the lexicon, the names on the graph, and search.

The lexicon is checked against the full product table; import and search run on a slice of a
few thousand products (the tested categories plus a random sample of the rest), so they take
seconds instead of a full import.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import kg.lexicons
from kg.embedded import EmbeddedStore
from kg.importers import load_dataset
from kg.importers.completejourney import LEXICON, TREE, default_dir
from kg.lexicons import load_lexicon
from kg.schema import DataError
from recommender.content import build_lexical
from recommender.query import QueryUnderstanding
from recommender.search import ProductSearch

# categories the search tests ask for, kept whole in the slice
SEARCHED = ["FLUID MILK PRODUCTS", "CHEESE", "BEEF", "SOFT DRINKS", "APPLES",
            "ORGANICS FRUIT & VEGETABLES", "CANNED MILK", "CHEESES"]
OTHERS = 3_000  # random products from every other category


@pytest.fixture(scope="module")
def products() -> pd.DataFrame:
    return pd.read_parquet(default_dir() / "products.parquet")


@pytest.fixture(scope="module")
def lexicon() -> pd.DataFrame:
    return load_lexicon(LEXICON)


# ---- (a) the lexicon against the real data --------------------------------------------------
@pytest.mark.parametrize("level", ["department", "product_category"])
def test_lexicon_names_every_department_and_category(lexicon, products, level) -> None:
    values = set(products[level].dropna().str.strip())
    named = set(lexicon.loc[lexicon["kind"] == level, "value"])
    assert len(values) == {"department": 32, "product_category": 303}[level]
    assert sorted(values - named) == []


def test_lexicon_values_are_spelled_as_in_the_data(lexicon, products) -> None:
    known = {level: set(products[level].dropna().str.strip()) for level in TREE}
    known["brand_type"] = set(products["brand"])
    assert set(lexicon["kind"]) == set(known)
    misspelled = [(k, v) for k, v in zip(lexicon["kind"], lexicon["value"], strict=True)
                  if v not in known[k]]
    assert misspelled == []
    assert set(lexicon.loc[lexicon["kind"] == "brand_type", "value"]) == {"National", "Private"}


def test_lexicon_covers_the_common_product_types(lexicon, products) -> None:
    counts = products["product_type"].dropna().str.strip().value_counts()
    named = set(lexicon.loc[lexicon["kind"] == "product_type", "value"])
    assert sum(t in named for t in counts.index[:300]) >= 280  # the rest: "PREMIUM", "MISC"...
    assert counts[counts.index.isin(named)].sum() / counts.sum() > 0.75


def test_no_chinese_name_means_two_things(lexicon) -> None:
    """A synonym shared by two English values would make a query match both; none is."""
    meanings: dict[str, set[str]] = {}
    for value, names in zip(lexicon["value"], lexicon["names_zh"], strict=True):
        for name in names.split("|"):
            meanings.setdefault(name.lower(), set()).add(value)
    assert {n: v for n, v in meanings.items() if len(v) > 1} == {}


def test_lexicon_rejects_unknown_kinds_and_repeats(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(kg.lexicons, "LEXICONS", tmp_path)
    (tmp_path / "typo.tsv").write_text("# header\nproduct_categroy\tBEEF\t牛肉\n",
                                       encoding="utf-8")
    with pytest.raises(DataError, match=r"typo.tsv, line 2, field 'kind'.*unknown kind"):
        load_lexicon("typo", kinds=TREE)
    (tmp_path / "twice.tsv").write_text("department\tMEAT\t肉类\ndepartment\tMEAT\t鲜肉\n",
                                        encoding="utf-8")
    with pytest.raises(DataError, match="line 2.*already named on line 1"):
        load_lexicon("twice")


# ---- (b) the names on the graph ----------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, products) -> Path:
    """A workspace holding a slice of Complete Journey: about 4,500 products."""
    data = tmp_path_factory.mktemp("cj_slice_data")
    searched = products[products["product_category"].isin(SEARCHED)]
    rest = products.drop(searched.index).sample(OTHERS, random_state=7)
    chosen = pd.concat([searched, rest])
    chosen.to_parquet(data / "products.parquet", index=False)
    transactions = pd.read_parquet(default_dir() / "transactions.parquet")
    transactions[transactions["product_id"].isin(chosen["product_id"])].to_parquet(
        data / "transactions.parquet", index=False)
    pd.read_parquet(default_dir() / "demographics.parquet").to_parquet(
        data / "demographics.parquet", index=False)
    workspace = tmp_path_factory.mktemp("cj_slice")
    store = EmbeddedStore(workspace / "graph")
    result, _ = load_dataset("completejourney", store, data_dir=data)
    assert result.stats["chinese_names"] > 1_000
    build_lexical(store, workspace)
    return workspace


@pytest.fixture(scope="module")
def store(workspace) -> EmbeddedStore:
    return EmbeddedStore(workspace / "graph")


def test_category_nodes_carry_chinese_names(store: EmbeddedStore) -> None:
    assert store.get_node("Category", "GROCERY > FLUID MILK PRODUCTS") == {
        "id": "GROCERY > FLUID MILK PRODUCTS", "name": "FLUID MILK PRODUCTS", "level": 1,
        "name_zh": "牛奶", "names_zh": "牛奶|鲜奶|液态奶|鲜牛奶"}
    assert store.get_node("Category", "MEAT")["name_zh"] == "肉类"
    leaf = store.get_node("Category", "MEAT > BEEF > CHOICE BEEF")
    assert leaf["name_zh"] == "特选级牛肉"
    categories = store.node_table("Category")
    upper = categories[categories["level"] < 2]
    assert upper["name_zh"].notna().all()  # every department and category in the slice
    assert categories["name_zh"].notna().mean() > 0.4  # product types: the common ones
    assert store.get_node("Attribute", "brand_type=Private")["names_zh"] == \
        "自有品牌|超市自有品牌|商店自有品牌"
    assert store.get_node("Attribute", "brand_type=National")["name_zh"] == "全国品牌"


# ---- (c) Chinese queries find what their English twins find ------------------------------------
@pytest.fixture(scope="module")
def search(workspace) -> ProductSearch:
    return ProductSearch.load(workspace)


def _categories(search: ProductSearch, ids: list[str]) -> set[str]:
    paths = search.catalog.set_index("id").loc[ids, "category"]
    return {path.split(" > ")[1] for path in paths}


@pytest.mark.parametrize(("chinese", "english", "category"), [
    ("牛奶", "fluid milk products", "FLUID MILK PRODUCTS"),
    ("奶酪", "cheese", "CHEESE"),
    ("牛肉", "beef", "BEEF"),
    ("软饮料", "soft drinks", "SOFT DRINKS"),
    ("汽水", "soft drinks", "SOFT DRINKS"),
    ("有机 苹果", "organic apples", "ORGANICS FRUIT & VEGETABLES"),
    ("有机苹果", "organic apples", "ORGANICS FRUIT & VEGETABLES"),
])
def test_chinese_query_matches_its_english_twin(search, chinese, english, category) -> None:
    zh, en = search.search(chinese, k=10), search.search(english, k=10)
    zh_ids, en_ids = [h.id for h in zh.hits], [h.id for h in en.hits]
    assert len(zh_ids) == 10 and zh.understood["concepts"]
    assert _categories(search, zh_ids) == {category}
    assert len(set(zh_ids) & set(en_ids)) >= 8


def test_two_concept_queries(search) -> None:
    spaced = search.search("有机 苹果", k=10)
    assert spaced.understood["concepts"] == [
        ["category", "ORGANICS FRUIT & VEGETABLES"], ["category", "APPLES"]]
    assert all("APPLES" in h.title for h in spaced.hits)
    private_milk = search.search("自有品牌 牛奶", k=10)
    assert private_milk.understood["concepts"] == [
        ["brand_type", "Private"], ["category", "FLUID MILK PRODUCTS"]]
    catalog = search.catalog.set_index("id")
    hits = [h.id for h in private_milk.hits]
    assert len(hits) == 10 and set(catalog.loc[hits, "brand_type"]) == {"Private"}
    assert _categories(search, hits) == {"FLUID MILK PRODUCTS"}


def test_long_names_are_understood_whole(lexicon) -> None:
    """大米 renders as "RICE - DRY BAG AND BOX" (5 words): the whole type, not "DRY" alone."""
    categories = lexicon[lexicon["kind"].isin(TREE)].rename(columns={"value": "name"})
    understanding = QueryUnderstanding.from_graph(lexicon[lexicon["kind"] == "brand_type"],
                                                  categories)
    parsed = understanding.parse("自有品牌大米")
    assert parsed.english == "Private RICE - DRY BAG AND BOX"
    assert [(c.kind, c.value) for c in parsed.concepts] == [
        ("brand_type", "Private"), ("category", "RICE - DRY BAG AND BOX")]
