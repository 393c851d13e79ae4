"""The ml100k-kg importer on the real RecBole atomic files, plus its handling of bad files.

Expected counts are measured from the files independently (plain tab splitting) as well as
pinned, so a regression in the importer and a change in the data both show up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kg.embedded import EmbeddedStore
from kg.importers import load_dataset
from kg.importers.base import ImportResult
from kg.importers.ml100k_kg import build, default_dir
from kg.schema import IN_CATEGORY, REL, SAME_AS, DataError
from tests.store_conformance import snapshot

DATA = default_dir()
FILES = ("user", "item", "inter", "kg", "link")
HAVE_DATA = all((DATA / f"ml-100k.{ext}").is_file() for ext in FILES)
SKIP_REASON = f"shared data set missing: {DATA} (see ../shared/data/README.md)"
real_data = pytest.mark.skipif(not HAVE_DATA, reason=SKIP_REASON)


def rows(ext: str, data_dir: Path = DATA) -> list[list[str]]:
    """A file's data rows split on tabs, header dropped."""
    lines = (data_dir / f"ml-100k.{ext}").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[1:] if line]


@pytest.fixture(scope="module")
def result() -> ImportResult:
    if not HAVE_DATA:
        pytest.skip(SKIP_REASON)
    return build(None)


@pytest.fixture(scope="module")
def store(result: ImportResult, tmp_path_factory: pytest.TempPathFactory) -> EmbeddedStore:
    store = EmbeddedStore(tmp_path_factory.mktemp("ml100k") / "g")
    store.load(result.batch)
    return store


@real_data
def test_counts_match_the_files(result: ImportResult, store: EmbeddedStore) -> None:
    users, items, inter, kg, link = (rows(ext) for ext in FILES)
    entities = {r[0] for r in kg} | {r[2] for r in kg} | {r[1] for r in link}
    genres = [(r[0], g) for r in items for g in r[3].split() if g != "unknown"]
    counts = store.counts()
    assert (len(users), len(items), len(inter), len(kg), len(link)) == (
        943, 1_682, 100_000, 91_631, 1_598)
    assert result.stats["user_rows"] == counts["nodes"]["User"] == len(users)
    assert result.stats["item_rows"] == counts["nodes"]["Product"] == len(items)
    assert result.stats["inter_rows"] == counts["relationships"]["INTERACTED"] == len(inter)
    assert result.stats["kg_rows"] == counts["relationships"]["REL"] == len(set(map(tuple, kg)))
    assert result.stats["link_rows"] == counts["relationships"]["SAME_AS"] == len(link)
    assert result.stats["entities"] == counts["nodes"]["Entity"] == len(entities) == 34_628
    assert result.stats["relations"] == len({r[1] for r in kg}) == 24
    assert counts["nodes"]["Category"] == len({g for _, g in genres}) == 18
    assert counts["relationships"]["IN_CATEGORY"] == len(genres) == 2_891
    for label in ("Brand", "Attribute"):
        assert counts["nodes"][label] == 0


@real_data
def test_spot_checks(store: EmbeddedStore) -> None:
    assert store.get_node("Product", "1") == {"id": "1", "title": "Toy Story", "year": 1995}
    assert store.get_node("Product", "267") == {"id": "267"}  # title and year 'unkonwn'
    assert store.get_node("Product", "1412")["year"] == 1995  # year field 'V'
    assert store.get_node("User", "1") == {
        "id": "1", "age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"}
    assert store.get_node("Category", "genre:Children's") == {
        "id": "genre:Children's", "name": "Children's", "level": 0}
    in_cat = store.rel_table(IN_CATEGORY)
    assert set(in_cat.loc[in_cat["source"] == "1", "target"]) == {
        "genre:Animation", "genre:Children's", "genre:Comedy"}
    assert not in_cat["source"].eq("267").any()  # genre 'unknown' only
    rating = store.interactions(user_id="196", product_id="242")
    assert rating.to_dict("records") == [{
        "user_id": "196", "product_id": "242", "kind": "rating", "weight": 3.0,
        "ts": 881250949, "count": 1}]
    same_as = store.rel_table(SAME_AS).set_index("source")["target"]
    assert same_as["476"] == "m.08gjyx"
    rel = store.rel_table(REL)
    hit = rel[(rel["source"] == "m.04ctbw8") & (rel["target"] == "m.0bln8")]
    assert hit[["key", "type"]].values.tolist() == [["film.producer.film"] * 2]


@real_data
def test_loading_twice_changes_nothing(result: ImportResult, tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "g")
    store.load(result.batch)
    first = store.counts()
    ratings = store.interactions()
    store.load(build(None).batch)
    assert store.counts() == first
    assert store.interactions().equals(ratings)
    assert EmbeddedStore(tmp_path / "g").counts() == first


# ---- small files ------------------------------------------------------------------------------
SMALL = {
    "user": ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
             "1\t24\tM\ttechnician\t85711", "2\t53\tF\tother\tT8H1N"],
    "item": ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
             "1\tToy Story\t1995\tAnimation Children's Comedy", "2\tGoldenEye\t1995\tAction",
             "3\tunkonwn\tunkonwn\tunknown"],
    # columns in another order than RecBole writes them
    "inter": ["timestamp:float\tuser_id:token\titem_id:token\trating:float",
              "881250949\t1\t1\t3", "891717742\t2\t2\t4.5", "878887116\t1\t3\t1"],
    "kg": ["head_id:token\trelation_id:token\ttail_id:token",
           "m.1\tfilm.film.genre\tm.g", "m.2\tfilm.film.genre\tm.g"],
    "link": ["item_id:token\tentity_id:token", "1\tm.1", "2\tm.2", "99\tm.9"],
}


def write_small(data_dir: Path, **replace: list[str]) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    for ext, lines in {**SMALL, **replace}.items():
        (data_dir / f"ml-100k.{ext}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data_dir


def test_small_files(tmp_path: Path) -> None:
    result = build(write_small(tmp_path / "d"))
    store = EmbeddedStore(tmp_path / "g")
    store.load(result.batch)
    counts = store.counts()
    assert counts["nodes"] == {"Product": 3, "Brand": 0, "Category": 4, "User": 2,
                               "Attribute": 0, "Entity": 3}
    assert counts["relationships"]["INTERACTED"] == 3
    assert counts["relationships"]["SAME_AS"] == 2  # item 99 is not in ml-100k.item
    assert any("dropped 1 row(s) for items not in" in note for note in result.notes)
    assert store.interactions(user_id="2")["weight"].tolist() == [4.5]
    assert store.get_node("User", "2")["zip_code"] == "T8H1N"


def swap(ext: str, line: int, old: str, new: str) -> list[str]:
    lines = list(SMALL[ext])
    lines[line - 1] = lines[line - 1].replace(old, new)
    return lines


@pytest.mark.parametrize(
    ("ext", "lines", "line", "field", "message"),
    [
        ("inter", swap("inter", 1, "\trating:float", ""), 1, "rating", "missing required"),
        ("item", swap("item", 1, "movie_title", "title"), 1, "movie_title", "missing required"),
        ("inter", swap("inter", 3, "\t4.5", "\tfour"), 3, "rating", "not a number"),
        ("inter", swap("inter", 4, "878887116", "8788.5"), 4, "timestamp", "not an integer"),
        ("user", swap("user", 2, "\t24", "\t"), 2, "age", "not an integer"),
        ("kg", swap("kg", 3, "\tm.g", ""), 3, "tail_id", "too few fields"),
        ("link", swap("link", 2, "\tm.1", "\tm.1\tx"), 2, "entity_id", "too many fields"),
        ("inter", swap("inter", 3, "\t2\t2", "\t2\t7"), 3, "item_id", "unknown item"),
        ("user", [*SMALL["user"], "1\t30\tF\tother\t1"], 4, "user_id", "duplicate id"),
    ],
    ids=["missing-rating", "missing-title", "bad-rating", "bad-timestamp", "bad-age",
         "too-few-fields", "too-many-fields", "unknown-item", "duplicate-user"],
)
def test_bad_input_is_located(
    tmp_path: Path, ext: str, lines: list[str], line: int, field: str, message: str
) -> None:
    store = EmbeddedStore(tmp_path / "g")
    load_dataset("ml100k-kg", store, write_small(tmp_path / "good"))
    before, tables = store.counts(), snapshot(store)
    bad = write_small(tmp_path / "bad", **{ext: lines})
    with pytest.raises(DataError, match=message) as caught:
        load_dataset("ml100k-kg", store, bad)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(bad / f"ml-100k.{ext}"), line, field)
    assert store.counts() == before
    assert snapshot(store) == tables
    assert EmbeddedStore(tmp_path / "g").counts() == before


def test_missing_file(tmp_path: Path) -> None:
    data_dir = write_small(tmp_path / "d")
    (data_dir / "ml-100k.kg").unlink()
    with pytest.raises(DataError, match="file not found") as caught:
        build(data_dir)
    assert caught.value.file == str(data_dir / "ml-100k.kg")
