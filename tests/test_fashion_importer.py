"""The fashion importer on the real styles.csv, plus its handling of bad files.

Expected counts are measured from the file independently (plain line splitting) as well as
pinned, so a regression in the importer and a change in the data both show up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kg.embedded import EmbeddedStore
from kg.importers import load_dataset
from kg.importers.base import ImportResult
from kg.importers.fashion import build, default_dir, derive_brand
from kg.schema import HAS_ATTRIBUTE, IN_CATEGORY, MADE_BY, SUBCATEGORY_OF, DataError
from tests.store_conformance import snapshot

DATA = default_dir()
HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage," \
         "productDisplayName"

real_data = pytest.mark.skipif(
    not (DATA / "styles.csv").is_file(),
    reason=f"shared data set missing: {DATA / 'styles.csv'} (see ../shared/data/README.md)",
)


@pytest.fixture(scope="module")
def result() -> ImportResult:
    if not (DATA / "styles.csv").is_file():
        pytest.skip(f"shared data set missing: {DATA / 'styles.csv'}")
    return build(None)


@pytest.fixture(scope="module")
def store(result: ImportResult, tmp_path_factory: pytest.TempPathFactory) -> EmbeddedStore:
    store = EmbeddedStore(tmp_path_factory.mktemp("fashion") / "g")
    store.load(result.batch)
    return store


@pytest.fixture(scope="module")
def raw_rows() -> list[list[str]]:
    """styles.csv split naively on ',' (no line in it needs quote handling)."""
    if not (DATA / "styles.csv").is_file():
        pytest.skip(f"shared data set missing: {DATA / 'styles.csv'}")
    lines = (DATA / "styles.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER
    return [line.split(",") for line in lines[1:] if line]


@real_data
def test_counts_match_the_file(
    result: ImportResult, store: EmbeddedStore, raw_rows: list[list[str]]
) -> None:
    ids = {row[0] for row in raw_rows}
    paths = {" > ".join(row[2:2 + n]) for row in raw_rows for n in (1, 2, 3)}
    images = {p.stem for p in (DATA / "images").glob("*.jpg")}
    repaired = sum(1 for row in raw_rows if len(row) > 10)
    counts = store.counts()
    assert len(raw_rows) == len(ids) == 44_446  # README's 44,424 = 44,446 - the 22 bad lines
    assert counts["nodes"]["Product"] == len(ids)
    assert repaired == result.stats["repaired_lines"] == 22
    assert "repaired 22 lines" in result.notes[0]
    assert counts["nodes"]["Category"] == len(paths) == 224
    assert counts["relationships"]["SUBCATEGORY_OF"] == len(paths) - 7 == 217
    assert counts["relationships"]["IN_CATEGORY"] == len(ids)
    assert counts["relationships"]["MADE_BY"] == len(ids)
    assert result.stats["images"] == len(images & ids) == 10_124
    # five attribute kinds per product minus the empty / 'NA' values
    missing = sum(1 for row in raw_rows for i in (1, 5, 6, 7, 8) if row[i] in ("", "NA"))
    assert counts["relationships"]["HAS_ATTRIBUTE"] == 5 * len(ids) - missing == 221_876
    assert counts["nodes"]["User"] == counts["nodes"]["Entity"] == 0


@real_data
def test_brand_rule_coverage(result: ImportResult, store: EmbeddedStore) -> None:
    stats = result.stats
    assert stats["brand_by_gender_word"] == 40_837
    assert stats["brand_by_first_word"] == 3_609
    assert stats["brand_missing"] == 0
    assert stats["brands"] == store.counts()["nodes"]["Brand"] == 736
    made_by = store.rel_table(MADE_BY).set_index("source")["target"]
    assert made_by["15970"] == "turtle check"
    assert made_by["39386"] == "peter england"
    assert store.get_node("Brand", "peter england") == {"id": "peter england",
                                                       "name": "Peter England"}
    # spellings differing only in case share one Brand, named by the most frequent spelling
    assert store.get_node("Brand", "adidas")["name"] == "ADIDAS"
    assert store.get_node("Brand", "united colors of benetton")["name"] == \
        "United Colors of Benetton"


def test_derive_brand() -> None:
    assert derive_brand("Turtle Check Men Navy Blue Shirt") == ("Turtle Check", "gender")
    assert derive_brand("United Colors of Benetton Women Peach Top") == (
        "United Colors of Benetton", "gender")
    assert derive_brand("Disney Kids Boy's Green Tee") == ("Disney", "gender")
    assert derive_brand("Kids Ville Girls Pink Top") == ("Kids Ville", "gender")
    assert derive_brand("Lakme Absolute Lip Colour") == ("Lakme", "first_word")
    # an audience word beyond the fifth word is not trusted
    assert derive_brand("A B C D E Men Shirt") == ("A", "first_word")
    assert derive_brand("  ") == (None, "none")


@real_data
def test_spot_checks(store: EmbeddedStore, raw_rows: list[list[str]]) -> None:
    assert store.get_node("Product", "15970") == {
        "id": "15970", "title": "Turtle Check Men Navy Blue Shirt",
        "image": str((DATA / "images" / "15970.jpg").resolve()), "year": 2011,
    }
    assert "image" not in store.get_node("Product", "39386")  # no photo in the sample
    # a repaired line keeps its whole title
    assert store.get_node("Product", "3418")["title"] == \
        "Myntra Men's Take my advice, I don't use it anyway Black T-shirt"
    assert store.get_node("Product", "23127")["title"] == \
        "Converse Unisex Green Live, Life, Laugh Flip Flops"
    in_cat = store.rel_table(IN_CATEGORY).set_index("source")["target"]
    assert in_cat["15970"] == "Apparel > Topwear > Shirts"
    parents = store.rel_table(SUBCATEGORY_OF).set_index("source")["target"]
    assert parents["Apparel > Topwear > Shirts"] == "Apparel > Topwear"
    assert parents["Apparel > Topwear"] == "Apparel"
    assert store.get_node("Category", "Apparel > Topwear") == {
        "id": "Apparel > Topwear", "name": "Topwear", "level": 1,
        "name_zh": "上装", "names_zh": "上装|上衣"}
    assert store.get_node("Attribute", "colour=Navy Blue")["names_zh"] == "藏青色|海军蓝|藏蓝色"
    named = store.node_table("Attribute")["name_zh"].notna()
    assert int(named.sum()) == 46 + 4 + 8 + 5  # every colour, season, usage, gender; no years
    attrs = store.rel_table(HAS_ATTRIBUTE)
    assert set(attrs.loc[attrs["source"] == "15970", "target"]) == {
        "colour=Navy Blue", "season=Fall", "usage=Casual", "gender=Men", "year=2011"}
    assert store.get_node("Attribute", "colour=Navy Blue") == {
        "id": "colour=Navy Blue", "kind": "colour", "value": "Navy Blue",
        "name_zh": "藏青色", "names_zh": "藏青色|海军蓝|藏蓝色",
        "aliases": "navy|dark blue|深蓝色|藏蓝色"}
    # aliases (kg/lexicons/fashion_aliases.tsv) reach Brand and Category nodes too
    assert "耐克" in store.get_node("Brand", "nike")["aliases"].split("|")
    assert "hoodie" in store.get_node(
        "Category", "Apparel > Topwear > Sweatshirts")["aliases"].split("|")
    assert store.get_node("Attribute", "usage=NA") is None
    # the one product without a year (nor season) has neither property nor attribute for them
    no_year = next(row[0] for row in raw_rows if row[7] == "")
    assert no_year == "53781"
    assert "year" not in store.get_node("Product", no_year)
    assert set(attrs.loc[attrs["source"] == no_year, "target"]) == {
        "colour=Blue", "usage=Sports", "gender=Men"}


@real_data
def test_loading_twice_changes_nothing(result: ImportResult, tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "g")
    store.load(result.batch)
    first = store.counts()
    products = store.node_table("Product")
    store.load(build(None).batch)
    assert store.counts() == first
    assert store.node_table("Product").equals(products)
    assert EmbeddedStore(tmp_path / "g").counts() == first  # and it persisted


# ---- bad input ------------------------------------------------------------------------------
GOOD = [
    "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
    "2,Women,Accessories,Watches,Watches,NA,,,NA,Titan Women Silver Watch",
    "3,Unisex,Footwear,Shoes,Casual Shoes,White,Winter,2012,Casual,Newfeel Unisex White, Blue",
]


def write_styles(tmp_path: Path, lines: list[str], header: str = HEADER) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "styles.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return tmp_path


def test_small_file_missing_values_and_repair(tmp_path: Path) -> None:
    result = build(write_styles(tmp_path, GOOD))
    batch = result.batch
    assert result.stats["repaired_lines"] == 1
    assert "repaired 1 lines" in result.notes[0] and "lines 4" in result.notes[0]
    products = batch.node_frame("Product").set_index("id")
    assert products.loc["3", "title"] == "Newfeel Unisex White, Blue"
    assert products["image"].isna().all()  # there is no images folder
    targets = set(batch.rel_frame(HAS_ATTRIBUTE).query("source == '2'")["target"])
    assert targets == {"gender=Women"}  # 'NA' and empty values give no attribute


@pytest.mark.parametrize(
    ("lines", "header", "line", "field", "message"),
    [
        (GOOD, HEADER.replace(",season", ""), 1, "season", "missing required column"),
        ([GOOD[0], "2,Women,Accessories,Watches"], HEADER, 3, "articleType", "too few fields"),
        ([GOOD[0], GOOD[1].replace("2,", "2x,", 1)], HEADER, 3, "id", "not an integer"),
        ([GOOD[0], GOOD[1], GOOD[0]], HEADER, 4, "id", "duplicate id"),
        ([GOOD[0], GOOD[1].replace("NA,,,", "NA,,20x1,")], HEADER, 3, "year", "not an integer"),
    ],
    ids=["missing-column", "too-few-fields", "bad-id", "duplicate-id", "bad-year"],
)
def test_bad_input_is_located(
    tmp_path: Path, lines: list[str], header: str, line: int, field: str, message: str
) -> None:
    data_dir = write_styles(tmp_path / "bad", lines, header)
    store = EmbeddedStore(tmp_path / "g")
    load_dataset("fashion", store, write_styles(tmp_path / "good", GOOD))
    before, tables = store.counts(), snapshot(store)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset("fashion", store, data_dir)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(data_dir / "styles.csv"), line, field)
    assert store.counts() == before
    assert snapshot(store) == tables
    assert EmbeddedStore(tmp_path / "g").counts() == before


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found") as caught:
        build(tmp_path)
    assert caught.value.file == str(tmp_path / "styles.csv")
