"""The generic format (docs/generic-format.md): what a merchant's files become, and how bad
files are reported (file, line, field) without touching the store."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from kg.embedded import EmbeddedStore
from kg.importers import get_importer, load_dataset
from kg.importers.generic import build
from kg.schema import INTERACTED, REL, DataError

PRODUCTS = [
    {"id": "p1", "title": "Red Shirt", "brand": "Acme  Corp",
     "category_path": "Apparel > Topwear > Shirts", "description": "A red shirt",
     "image": "img/p1.jpg", "price": 19.99, "entity": "m.01", "colour": "Red",
     "season": "Summer"},
    {"id": "p2", "title": "Blue Jeans", "brand": "ACME corp",
     "category_path": "Apparel>Bottomwear", "colour": "Blue"},
    {"id": "p3", "title": "Mug", "category_path": "Home", "description": "Big, heavy mug",
     "price": 5, "colour": " Red ", "season": "Winter"},
]
PRODUCT_COLUMNS = ["id", "title", "brand", "category_path", "description", "image", "price",
                   "entity", "colour", "season"]
USERS = [{"id": "u1", "age": 34, "city": "Oslo"}, {"id": "u2", "city": "Bergen"}]
USER_COLUMNS = ["id", "age", "city"]
INTERACTIONS = [
    {"user_id": "u1", "product_id": "p1", "kind": "view", "timestamp": 1700000000},
    {"user_id": "u1", "product_id": "p1", "kind": "view", "timestamp": "2024-01-01T00:00:00Z",
     "weight": 2},
    {"user_id": "u1", "product_id": "p1", "kind": "purchase", "timestamp": 1700000100.7},
    {"user_id": "u2", "product_id": "p3", "kind": "cart",
     "timestamp": "2024-01-01T01:00:00+01:00", "weight": 0.5},
]
INTERACTION_COLUMNS = ["user_id", "product_id", "kind", "timestamp", "weight"]
TRIPLES = [
    {"head": "m.01", "relation": "film.genre", "tail": "m.02"},
    {"head": "m.02", "relation": "film.genre", "tail": "m.03"},
    {"head": "m.01", "relation": "film.genre", "tail": "m.02"},
]
TRIPLE_COLUMNS = ["head", "relation", "tail"]
CATALOG = {
    "products": (PRODUCT_COLUMNS, PRODUCTS),
    "users": (USER_COLUMNS, USERS),
    "interactions": (INTERACTION_COLUMNS, INTERACTIONS),
    "triples": (TRIPLE_COLUMNS, TRIPLES),
}
JAN_1_2024 = 1704067200  # 2024-01-01T00:00:00Z

EXPECTED_COUNTS = {
    "nodes": {"Product": 3, "Brand": 1, "Category": 5, "User": 2, "Attribute": 4, "Entity": 3},
    "relationships": {"MADE_BY": 2, "IN_CATEGORY": 3, "SUBCATEGORY_OF": 3, "HAS_ATTRIBUTE": 5,
                      "INTERACTED": 3, "SAME_AS": 1, "REL": 2},
}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_catalog(directory: Path, fmt: str, tables: tuple[str, ...] = tuple(CATALOG)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for table in tables:
        columns, rows = CATALOG[table]
        if fmt == "csv":
            write_csv(directory / f"{table}.csv", columns, rows)
        else:
            write_jsonl(directory / f"{table}.jsonl", rows)
    return directory


def write_files(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (directory / name).write_bytes(content)
        else:
            (directory / name).write_text(content, encoding="utf-8")
    return directory


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    return EmbeddedStore(tmp_path / "g")


def tables_of(store: EmbeddedStore) -> dict[str, pd.DataFrame]:
    nodes, rels = store.tables()
    return {**nodes, **rels}


# ---- happy paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_catalog_loads_with_exact_counts_and_properties(
    tmp_path: Path, store: EmbeddedStore, fmt: str
) -> None:
    directory = write_catalog(tmp_path / "data", fmt)
    result, _ = load_dataset("generic", store, directory)

    assert store.counts() == EXPECTED_COUNTS
    assert result.stats[f"interactions.{fmt}"] == 4
    assert result.stats["interacted_relationships"] == 3
    assert store.get_node("Product", "p1") == {
        "id": "p1", "title": "Red Shirt", "description": "A red shirt",
        "image": str((directory / "img/p1.jpg").resolve()),
        "price": 19.99, "brand": "Acme  Corp",
    }
    assert store.get_node("Product", "p2") == {"id": "p2", "title": "Blue Jeans",
                                               "brand": "ACME corp"}
    assert store.get_node("Product", "p3")["price"] == 5.0
    assert store.get_node("Brand", "acme corp") == {"id": "acme corp", "name": "ACME corp"}
    assert store.get_node("Category", "Apparel") == {"id": "Apparel", "name": "Apparel",
                                                     "level": 0}
    assert store.get_node("Category", "Apparel > Topwear > Shirts") == {
        "id": "Apparel > Topwear > Shirts", "name": "Shirts", "level": 2}
    assert store.get_node("Category", "Apparel > Bottomwear")["level"] == 1
    assert store.get_node("Attribute", "colour=Red") == {"id": "colour=Red", "kind": "colour",
                                                         "value": "Red"}
    assert store.get_node("User", "u1") == {"id": "u1", "age": "34", "city": "Oslo"}
    assert store.get_node("User", "u2") == {"id": "u2", "city": "Bergen"}

    rels = tables_of(store)
    pairs = {name: set(zip(rels[name]["source"], rels[name]["target"], strict=True))
             for name in EXPECTED_COUNTS["relationships"]}
    assert pairs["SUBCATEGORY_OF"] == {
        ("Apparel > Topwear", "Apparel"), ("Apparel > Topwear > Shirts", "Apparel > Topwear"),
        ("Apparel > Bottomwear", "Apparel"),
    }
    assert pairs["IN_CATEGORY"] == {("p1", "Apparel > Topwear > Shirts"),
                                    ("p2", "Apparel > Bottomwear"), ("p3", "Home")}
    assert pairs["MADE_BY"] == {("p1", "acme corp"), ("p2", "acme corp")}
    assert pairs["HAS_ATTRIBUTE"] == {("p1", "colour=Red"), ("p1", "season=Summer"),
                                      ("p2", "colour=Blue"), ("p3", "colour=Red"),
                                      ("p3", "season=Winter")}
    assert pairs["SAME_AS"] == {("p1", "m.01")}
    assert set(store.rel_table(REL)["type"]) == {"film.genre"}
    assert pairs["REL"] == {("m.01", "m.02"), ("m.02", "m.03")}

    got = store.interactions()
    assert got[["user_id", "product_id", "kind", "count", "weight", "ts"]].to_dict("records") == [
        {"user_id": "u1", "product_id": "p1", "kind": "purchase", "count": 1, "weight": 1.0,
         "ts": 1700000100},
        {"user_id": "u1", "product_id": "p1", "kind": "view", "count": 2, "weight": 3.0,
         "ts": JAN_1_2024},
        {"user_id": "u2", "product_id": "p3", "kind": "cart", "count": 1, "weight": 0.5,
         "ts": JAN_1_2024},
    ]
    assert "_file" not in store.rel_table(INTERACTED).columns


def test_csv_and_jsonl_give_the_same_graph(tmp_path: Path) -> None:
    a, b = EmbeddedStore(tmp_path / "a"), EmbeddedStore(tmp_path / "b")
    load_dataset("generic", a, write_catalog(tmp_path / "csv", "csv"))
    load_dataset("generic", b, write_catalog(tmp_path / "jsonl", "jsonl"))
    ta, tb = tables_of(a), tables_of(b)
    # image paths are stored absolute, so they name each catalog's own folder
    assert ta["Product"]["image"].iloc[0] == str((tmp_path / "csv" / "img/p1.jpg").resolve())
    ta["Product"]["image"] = ta["Product"]["image"].str.replace("/csv/", "/jsonl/")
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], obj=name)


def test_registered_under_generic(tmp_path: Path) -> None:
    assert get_importer("generic") is build


def test_repeated_interactions_aggregate(tmp_path: Path, store: EmbeddedStore) -> None:
    directory = write_files(tmp_path / "data", {
        "products.csv": "id\np1\np2\n",
        "users.csv": "id\nu1\n",
        "interactions.csv": (
            "user_id,product_id,kind,timestamp,weight\n"
            "u1,p1,view,100,1\n"
            "u1,p1,view,300,2.5\n"
            "u1,p1,view,200,\n"
            "u1,p1,rating,150,4\n"
            "u1,p2,view,2024-01-01 00:00:30,\n"
        ),
    })
    result, report = load_dataset("generic", store, directory)
    assert report.relationships["INTERACTED"] == 3
    assert result.stats["interactions.csv"] == 5
    assert any("5 rows aggregated into 3" in note for note in result.notes)
    rows = store.interactions().set_index(["product_id", "kind"])
    assert rows.loc[("p1", "view"), ["count", "weight", "ts"]].tolist() == [3, 4.5, 300]
    assert rows.loc[("p1", "rating"), ["count", "weight", "ts"]].tolist() == [1, 4.0, 150]
    assert rows.loc[("p2", "view"), "ts"] == JAN_1_2024 + 30  # naive datetimes are UTC


@pytest.mark.parametrize(("value", "expected"), [
    ("1700000000", 1700000000),
    ("1700000000.9", 1700000000),
    ("1.7e9", 1700000000),
    ("2024-01-01", JAN_1_2024),
    ("2024-01-01T00:00:30", JAN_1_2024 + 30),
    ("2024-01-01 00:00:30.5", JAN_1_2024 + 30),
    ("2024-01-01T00:00:00Z", JAN_1_2024),
    ("2024-01-01T09:00:00+09:00", JAN_1_2024),
])
def test_timestamp_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    # a local zone far from UTC shows that naive datetimes are read as UTC, not local time
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        directory = write_files(tmp_path / "data", {
            "interactions.csv": f"user_id,product_id,kind,timestamp\nu1,p1,view,{value}\n",
        })
        frame = build(directory).batch.rel_frame(INTERACTED)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert frame["ts"].tolist() == [expected]


def test_loading_twice_is_idempotent(tmp_path: Path, store: EmbeddedStore) -> None:
    directory = write_catalog(tmp_path / "data", "csv")
    load_dataset("generic", store, directory)
    counts, tables = store.counts(), tables_of(store)
    load_dataset("generic", store, directory)
    assert store.counts() == counts == EXPECTED_COUNTS
    again = tables_of(store)
    for name, frame in tables.items():
        # column order may change on re-merge (see schema.upsert_frame); values may not
        pd.testing.assert_frame_equal(again[name], frame, obj=name, check_like=True)
    # counts are the file's, not accumulated across loads
    assert store.interactions(user_id="u1", kind="view")["count"].tolist() == [2]


def test_interactions_only_directory_uses_stored_products_and_users(
    tmp_path: Path, store: EmbeddedStore
) -> None:
    load_dataset("generic", store,
                 write_catalog(tmp_path / "catalog", "csv", ("products", "users")))
    before = store.counts()
    assert before["relationships"]["INTERACTED"] == 0
    events = write_files(tmp_path / "events", {
        "interactions.jsonl": '{"user_id": "u2", "product_id": "p2", "kind": "purchase",'
                              ' "timestamp": 1700000000}\n',
    })
    load_dataset("generic", store, events)
    after = store.counts()
    assert after["relationships"]["INTERACTED"] == 1
    assert after["nodes"] == before["nodes"]
    assert store.interactions()[["user_id", "product_id", "kind"]].values.tolist() == [
        ["u2", "p2", "purchase"]]


def test_utf8_bom_quoted_newlines_and_blank_lines(tmp_path: Path, store: EmbeddedStore) -> None:
    directory = write_files(tmp_path / "data", {
        "products.csv": '\ufeffid,description\np1,"two\nlines"\n\np2,ok\n'.encode(),
        "users.jsonl": '{"id": "u1"}\n\n   \n{"id": "u2", "vip": true}\n',
    })
    load_dataset("generic", store, directory)
    assert store.get_node("Product", "p1") == {"id": "p1", "description": "two\nlines"}
    assert store.counts()["nodes"]["Product"] == 2
    assert store.get_node("User", "u2") == {"id": "u2", "vip": "true"}


def test_build_writes_nothing(tmp_path: Path, store: EmbeddedStore) -> None:
    result = build(write_catalog(tmp_path / "data", "csv"))
    assert result.dataset == "generic"
    assert result.batch.row_count() > 0
    assert sum(store.counts()["nodes"].values()) == 0


# ---- errors ---------------------------------------------------------------------------------
GOOD_INTERACTIONS_HEADER = "user_id,product_id,kind,timestamp,weight\n"

# (files, file the error names, line, field)
ERRORS: dict[str, tuple[dict[str, str | bytes], str, int | None, str | None]] = {
    "no files": ({"notes.txt": "hello"}, ".", None, None),
    "csv and jsonl": ({"users.csv": "id\nu9\n", "users.jsonl": '{"id": "u9"}\n'},
                      "users.csv", None, None),
    "missing column": ({"interactions.csv": "user_id,product_id,timestamp\nu1,p1,1\n"},
                       "interactions.csv", 1, "kind"),
    "empty file": ({"products.csv": ""}, "products.csv", 1, "id"),
    "duplicate header": ({"products.csv": "id,title,title\np9,a,b\n"}, "products.csv", 1,
                         "title"),
    "unnamed column": ({"users.csv": "id,,city\nu9,x,y\n"}, "users.csv", 1, None),
    "empty id": ({"products.csv": "id,title\np9,ok\n,no id\n"}, "products.csv", 3, "id"),
    "blank id": ({"users.csv": "id,city\n   ,Oslo\n"}, "users.csv", 2, "id"),
    "price not a number": ({"products.csv": "id,price\np9,12\np10,cheap\n"}, "products.csv",
                           3, "price"),
    "price nan": ({"products.csv": "id,price\np9,nan\n"}, "products.csv", 2, "price"),
    "extra field after quoted newlines": (
        {"products.csv": 'id,description,price\np9,"one\ntwo\nthree",1\np10,x,1,5\n'},
        "products.csv", 5, None),
    "bad price in a multi-line record": (
        {"products.csv": 'id,description,price\np9,ok,1\np10,"one\ntwo",cheap\n'},
        "products.csv", 3, "price"),
    "empty category part": ({"products.csv": "id,category_path\np9,A >  > C\n"},
                            "products.csv", 2, "category_path"),
    "timestamp unparseable": ({"interactions.csv": GOOD_INTERACTIONS_HEADER
                               + "u1,p1,view,100,\nu1,p1,view,yesterday,\n"},
                              "interactions.csv", 3, "timestamp"),
    "timestamp empty": ({"interactions.csv": GOOD_INTERACTIONS_HEADER + "u1,p1,view,,1\n"},
                        "interactions.csv", 2, "timestamp"),
    "weight not a number": ({"interactions.csv": GOOD_INTERACTIONS_HEADER
                             + "u1,p1,view,100,heavy\n"}, "interactions.csv", 2, "weight"),
    "unknown kind": ({"interactions.csv": GOOD_INTERACTIONS_HEADER + "u1,p1,like,100,\n"},
                     "interactions.csv", 2, "kind"),
    "too many fields": ({"triples.csv": "head,relation,tail\na,r,b\na,r,b,c\n"},
                        "triples.csv", 3, None),
    "too few fields": ({"triples.csv": "head,relation,tail\na,r\n"}, "triples.csv", 2, "tail"),
    "bad quoting": ({"products.csv": 'id,title\np9,"shirt"x\n'}, "products.csv", 2, None),
    "empty relation": ({"triples.csv": "head,relation,tail\na,,b\n"}, "triples.csv", 2,
                       "relation"),
    "invalid utf-8": ({"users.csv": b"id,city\nu9,Oslo\nu10,Troms\xf8\n"}, "users.csv", 3,
                      None),
    "jsonl not an object": ({"users.jsonl": '{"id": "u9"}\n["u10"]\n'}, "users.jsonl", 2,
                            None),
    "jsonl invalid json": ({"products.jsonl": '\n{"id": "p9"}\n{"id": "p10",}\n'},
                           "products.jsonl", 3, None),
    "jsonl NaN": ({"products.jsonl": '{"id": "p9", "price": NaN}\n'}, "products.jsonl", 1,
                  None),
    "jsonl duplicate key": ({"products.jsonl": '{"id": "p9", "title": "a", "title": "b"}\n'},
                            "products.jsonl", 1, "title"),
    "jsonl missing required": ({"triples.jsonl": '{"head": "a", "tail": "b"}\n'},
                               "triples.jsonl", 1, "relation"),
    "jsonl object as text": ({"products.jsonl": '{"id": "p9", "colour": {"r": 1}}\n'},
                             "products.jsonl", 1, "colour"),
    "jsonl price as boolean": ({"products.jsonl": '{"id": "p9", "price": true}\n'},
                               "products.jsonl", 1, "price"),
    "jsonl timestamp null": ({"interactions.jsonl": '{"user_id": "u1", "product_id": "p1", '
                              '"kind": "view", "timestamp": null}\n'},
                             "interactions.jsonl", 1, "timestamp"),
    # endpoints are checked when the store loads, against the batch and the stored ids
    "unknown user": ({"interactions.csv": GOOD_INTERACTIONS_HEADER
                      + "u1,p1,view,100,\nghost,p1,view,100,\nu1,p2,view,100,\n"
                      + "ghost,p1,view,200,\n"},
                     "interactions.csv", 3, "user_id"),
    "unknown product": ({"interactions.jsonl": '{"user_id": "u1", "product_id": "p1", '
                         '"kind": "view", "timestamp": 1}\n\n{"user_id": "u2", "product_id": '
                         '"nope", "kind": "cart", "timestamp": 1}\n'},
                        "interactions.jsonl", 3, "product_id"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_file_line_field_and_leave_the_store_alone(
    tmp_path: Path, store: EmbeddedStore, case: str
) -> None:
    load_dataset("generic", store, write_catalog(tmp_path / "catalog", "csv"))
    counts, tables = store.counts(), tables_of(EmbeddedStore(tmp_path / "g"))
    files, name, line, field = ERRORS[case]
    directory = write_files(tmp_path / "bad", files)

    with pytest.raises(DataError) as info:
        load_dataset("generic", store, directory)

    err = info.value
    assert err.file == str(directory if name == "." else directory / name), str(err)
    assert (err.line, err.field) == (line, field), str(err)
    assert store.counts() == counts
    reopened = tables_of(EmbeddedStore(tmp_path / "g"))
    for table, frame in tables.items():
        pd.testing.assert_frame_equal(reopened[table], frame, obj=table)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build(tmp_path / "nowhere")
    assert info.value.file == str(tmp_path / "nowhere")


def test_no_directory_given() -> None:
    with pytest.raises(DataError, match="no default location"):
        build(None)


def test_table_that_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "data" / "products.csv").mkdir(parents=True)
    with pytest.raises(DataError, match="not a regular file") as info:
        build(tmp_path / "data")
    assert info.value.file == str(tmp_path / "data" / "products.csv")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = write_files(tmp_path / "data", {"users.csv": "id\nu1\n"})
    real = Path.read_bytes

    def deny(self: Path) -> bytes:
        if self.name == "users.csv":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DataError, match="cannot read file: Permission denied") as info:
        build(directory)
    assert (info.value.file, info.value.line) == (str(directory / "users.csv"), None)


def test_progress_bars_do_not_change_the_result(tmp_path: Path) -> None:
    directory = write_catalog(tmp_path / "data", "jsonl")
    quiet, loud = build(directory), build(directory, progress=True)
    for rel in (INTERACTED, REL):
        pd.testing.assert_frame_equal(quiet.batch.rel_frame(rel, with_origin=True),
                                      loud.batch.rel_frame(rel, with_origin=True))
