"""Query understanding as shoppers type (issue 15): scripts, typos, filler, aliases that live in
the graph (loaded by a merchant through the generic format), and embedding-mapped words."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.cli import main
from kg.embedded import EmbeddedStore
from kg.importers import load_dataset
from kg.schema import DataError, GraphBatch
from recommender.content import build_lexical
from recommender.query import Concept, QueryUnderstanding
from recommender.search import ProductSearch

PRODUCTS = [
    # id, title, brand, category_path, colour, gender
    ("p1", "Nike Men Black Running Shoes", "Nike", "Footwear > Shoes > Sports Shoes", "Black",
     "Men"),
    ("p2", "Nike Women Pink Running Shoes", "Nike", "Footwear > Shoes > Sports Shoes", "Pink",
     "Women"),
    ("p3", "Puma Men Black Hooded Sweatshirt", "Puma", "Apparel > Topwear > Sweatshirts",
     "Black", "Men"),
    ("p4", "Puma Women Grey Sweatshirt", "Puma", "Apparel > Topwear > Sweatshirts", "Grey",
     "Women"),
    ("p5", "Titan Men Silver Dial Watch", "Titan", "Accessories > Watches > Watches", "Silver",
     "Men"),
    ("p6", "Titan Women Gold Dial Watch", "Titan", "Accessories > Watches > Watches", "Gold",
     "Women"),
    ("p7", "Levis Men Blue Slim Jeans", "Levis", "Apparel > Bottomwear > Jeans", "Blue", "Men"),
    ("p8", "Levis Women Black Skinny Jeans", "Levis", "Apparel > Bottomwear > Jeans", "Black",
     "Women"),
]
ALIASES = [
    ("category", "Sweatshirts", "hoodie|hoodies|卫衣"),
    ("category", "Sports Shoes", "运动鞋|跑鞋"),
    ("category", "Jeans", "牛仔裤"),
    ("brand", "Nike", "耐克"),
    ("gender", "Men", "husband|老公|男士"),
    ("gender", "Women", "wife|老婆|女士"),
    ("colour", "Black", "黑色"),
]


def write_shop(directory: Path, aliases: list[tuple[str, str, str]] = ALIASES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "products.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "brand", "category_path", "colour", "gender"])
        writer.writerows(PRODUCTS)
    with (directory / "aliases.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "value", "aliases"])
        writer.writerows(aliases)
    return directory


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A merchant's catalog with aliases, loaded by the generic loader, built lexically."""
    root = tmp_path_factory.mktemp("shop")
    store = EmbeddedStore(root / "ws" / "graph")
    load_dataset("generic", store, write_shop(root / "data"))
    build_lexical(store, root / "ws")
    return root / "ws"


@pytest.fixture(scope="module")
def shop(workspace: Path) -> ProductSearch:
    return ProductSearch.load(workspace)


def test_aliases_from_the_generic_loader_live_on_graph_nodes(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "g")
    load_dataset("generic", store, write_shop(tmp_path / "data"))
    assert store.get_node("Brand", "nike")["aliases"] == "耐克"
    assert store.get_node("Category", "Apparel > Topwear > Sweatshirts")["aliases"] == \
        "hoodie|hoodies|卫衣"
    assert store.get_node("Attribute", "gender=Men")["aliases"] == "husband|老公|男士"


@pytest.mark.parametrize(("row", "field", "message"), [
    (("category", "Hats", "cap"), "value", "neither a path"),
    (("brand", "Nike", "swoosh||just do it"), "aliases", "empty alias"),
    (("brand", "", "swoosh"), "value", "value"),
])
def test_bad_alias_rows_name_file_line_and_field(tmp_path: Path, row: tuple, field: str,
                                                 message: str) -> None:
    directory = write_shop(tmp_path / "data", [ALIASES[0], row])
    with pytest.raises(DataError) as error:
        load_dataset("generic", EmbeddedStore(tmp_path / "g"), directory)
    assert error.value.file == str(directory / "aliases.csv")
    assert error.value.line == 3 and error.value.field == field
    assert message in str(error.value)


def test_alias_and_filler_in_a_sentence(shop: ProductSearch) -> None:
    result = shop.search("I need a hoodie for my husband", k=3)
    assert result.hits[0].id == "p3"  # the men's sweatshirt
    understood = result.understood
    assert ["category", "Sweatshirts"] in understood["concepts"]
    assert ["gender", "Men"] in understood["concepts"]
    assert {"phrase": "hoodie", "kind": "category", "value": "Sweatshirts",
            "via": "alias"} in understood["mappings"]
    assert {"i", "need", "a", "for", "my"} <= {w.lower() for w in understood["dropped"]}
    assert "need" not in understood["search_text"].lower().split()


def test_traditional_chinese_is_converted_first(shop: ProductSearch) -> None:
    result = shop.search("老公 黑色運動鞋", k=2)
    assert result.understood["converted_script"] is True
    assert result.understood["normalised"] == "老公 黑色运动鞋"
    assert result.hits[0].id == "p1"


def test_chinese_brand_name_from_the_graph(shop: ProductSearch) -> None:
    result = shop.search("耐克 女士 跑鞋", k=1)
    assert result.hits[0].id == "p2"
    assert ["brand", "Nike"] in result.understood["concepts"]


def test_english_typos_are_corrected_against_the_catalog(shop: ProductSearch) -> None:
    result = shop.search("womens blak jeens", k=1)
    assert result.hits[0].id == "p8"
    corrections = {(c["typed"], c["corrected"]) for c in result.understood["corrections"]}
    assert ("blak", "black") in corrections and ("jeens", "jeans") in corrections


def test_chinese_homophone_typo_is_corrected(shop: ProductSearch) -> None:
    # 裤 (ku) typed as 库 (ku): same sound, one character off the graph name 牛仔裤
    result = shop.search("女士牛仔库", k=1)
    assert result.hits[0].id == "p8"
    assert {"typed": "牛仔库", "corrected": "牛仔裤"} in result.understood["corrections"]
    # a different-sounding character is no typo: 的 (de) is not 鞋 (xie)
    understanding = shop.understanding
    assert understanding.parse("跑的").corrections == []


def test_pinyin_typed_for_a_chinese_name(shop: ProductSearch) -> None:
    """A pinyin keyboard left in Latin mode: whole names or the rest of a started name."""
    result = shop.search("女士niuzai裤", k=1)  # niuzai + 裤 (ku) spells 牛仔裤
    assert result.hits[0].id == "p8"
    assert {"typed": "niuzai裤", "corrected": "牛仔裤"} in result.understood["corrections"]
    assert shop.search("耐克 女士 paoxie", k=1).hits[0].id == "p2"  # 跑鞋, standalone
    # an English or catalog word is no pinyin on its own, nor are short runs
    assert shop.understanding.parse("nike pink").corrections == []


def direct_understanding() -> QueryUnderstanding:
    attributes = pd.DataFrame([
        {"kind": "gender", "value": "Men", "aliases": "he|him|his|husband"},
        {"kind": "gender", "value": "Boys", "aliases": "son"},
        {"kind": "gender", "value": "Women", "aliases": "she|her"},
        {"kind": "gender", "value": "Girls", "aliases": "daughter"},
        {"kind": "colour", "value": "Pink"}])
    categories = pd.DataFrame([{"name": "Tshirts", "aliases": "t-shirt"}, {"name": "Shoes"}])
    brands = pd.DataFrame([{"name": "ONLY"}, {"name": "Nike"}])
    return QueryUnderstanding.from_graph(attributes, categories, brands,
                                         vocabulary=["toned", "football", "shoes"])


def test_a_pronoun_gives_way_to_the_person_it_stands_for() -> None:
    parse = direct_understanding().parse
    parsed = parse("my son joined a football club and he needs shoes")
    assert parsed.groups == [[Concept("gender", "Boys")], [Concept("category", "Shoes")]]
    assert "he" in parsed.dropped
    assert parse("shoes for him").groups == [[Concept("category", "Shoes")],
                                             [Concept("gender", "Men")]]


def test_common_english_words_are_not_typos_nor_lowercase_brands() -> None:
    parse = direct_understanding().parse
    assert parse("joined").corrections == []  # an English word, not a typo of "toned"
    assert parse("tonned").corrections == [("tonned", "toned")]
    sentence = parse("my daughter only wants pink t-shirts")
    assert Concept("brand", "ONLY") not in sentence.concepts
    assert Concept("gender", "Girls") in sentence.concepts
    assert Concept("brand", "ONLY") in parse("ONLY t-shirts").concepts
    assert Concept("brand", "Nike") in parse("nike shoes").concepts  # not a common word


def test_taiwan_phrases_convert_to_mainland_words() -> None:
    from recommender.query import normalise

    assert normalise("軟體") == "软件"  # a regional word, not only its characters


def test_hong_kong_and_taiwan_words_become_the_mainland_ones(shop: ProductSearch) -> None:
    from recommender.query import normalise

    assert normalise("男裝波鞋") == "男装运动鞋"  # Hong Kong: 波鞋 are sneakers
    assert normalise("白色洋裝") == "白色连衣裙"  # Taiwan: 洋裝 is a dress
    result = shop.search("老公 黑色波鞋", k=1)
    assert result.hits[0].id == "p1"
    assert ["category", "Sports Shoes"] in result.understood["concepts"]


def test_world_brand_names_reach_the_catalog_brands() -> None:
    from kg.importers.base import add_aliases
    from kg.importers.fashion import ATTRIBUTE_COLUMNS, CATEGORY_LEVELS

    batch = GraphBatch()
    batch.add_nodes("Brand", pd.DataFrame({"id": ["skechers", "nike", "unknown brand"],
                                           "name": ["Skechers", "Nike", "Unknown Brand"]}))
    assert add_aliases(batch, "fashion_aliases", CATEGORY_LEVELS, ATTRIBUTE_COLUMNS) == 2
    brands = batch.node_frame("Brand").set_index("id")["aliases"]
    assert "斯凯奇" in brands["skechers"].split("|")  # world_brands.tsv
    assert "耐克" in brands["nike"].split("|")  # the fashion catalog's own list


def test_written_together_or_apart_and_hyphens(shop: ProductSearch) -> None:
    parse = shop.understanding.parse
    assert Concept("category", "Sports Shoes") in parse("sports-shoes").concepts
    assert Concept("category", "Sweatshirts") in parse("sweat shirts").concepts
    assert Concept("category", "Sweatshirts") in parse("ＳＷＥＡＴＳＨＩＲＴＳ").concepts  # NFKC


def test_unknown_words_stay_unknown_without_a_dense_model(shop: ProductSearch) -> None:
    parsed = shop.understanding.parse("wristwatch")
    assert parsed.groups == [] and parsed.unknown == ["wristwatch"]


def test_embedding_maps_an_unknown_word_when_confident() -> None:
    """Real E5: "wristwatch" is in no name or alias, and means the category Watches."""
    from encoders.text import load_text_encoder

    encoder = load_text_encoder("e5")
    categories = pd.DataFrame({"name": ["Watches", "Jeans", "Sweatshirts", "Sports Shoes",
                                        "Handbags", "Sunglasses"]})
    attributes = pd.DataFrame({"kind": ["colour", "colour"], "value": ["Black", "Pink"]})
    understanding = QueryUnderstanding.from_graph(attributes, categories,
                                                  embed=encoder.encode_queries)
    parsed = understanding.parse("wristwatch")
    assert parsed.concepts == [Concept("category", "Watches")]
    assert parsed.mappings[0]["via"] == "embedding" and parsed.mappings[0]["score"] > 0.8
    # a word the model cannot place confidently maps to nothing rather than to a guess
    strict = QueryUnderstanding.from_graph(attributes, categories, embed=encoder.encode_queries)
    strict.min_margin = 1.0
    assert strict.parse("wristwatch").groups == []


def test_api_search_shows_how_the_query_was_understood(workspace: Path) -> None:
    app = create_app(workspace, store=EmbeddedStore(workspace / "graph"), load_recommender=False)
    with TestClient(app) as client:
        r = client.get("/search", params={"q": "I need a hoodie for my husband", "k": 3})
        assert r.status_code == 200, r.text
        understood = r.json()["understood"]
    assert r.json()["hits"][0]["id"] == "p3"
    assert {"phrase": "hoodie", "kind": "category", "value": "Sweatshirts",
            "via": "alias"} in understood["mappings"]
    assert ["gender", "Men"] in [c for group in understood["constraints"] for c in group]
    assert "need" in understood["dropped"] and understood["search_text"]
    with TestClient(app) as client:
        fixed = client.get("/search", params={"q": "blak jeens 牛仔褲"}).json()["understood"]
    assert fixed["converted_script"] is True
    assert {"typed": "blak", "corrected": "black"} in fixed["corrections"]


def test_cli_search_explain(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "老公 運動鞋 blak", "--explain", "--k", "2",
                 "--workspace", str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "script:      converted to simplified Chinese: 老公 运动鞋 blak" in out
    assert "spelling:    blak -> black" in out
    assert "mapped:      老公 -> gender=Men via alias" in out
    assert "constraint:  category=Sports Shoes" in out
    assert "p1" in out.splitlines()[-2]  # the first hit: the men's black running shoes


@pytest.fixture(scope="module")
def dense_shop(workspace: Path) -> ProductSearch:
    """The same shop with real E5 document vectors (no photos: an untrained joint space)."""
    import dataclasses

    import numpy as np

    from encoders.joint import JointSpace
    from encoders.text import load_text_encoder

    lexical = ProductSearch.load(workspace).artifacts
    encoder = load_text_encoder("e5")
    vectors = encoder.encode_passages(lexical.documents)
    joint = JointSpace(1, encoder.dim)
    n = len(lexical.documents)
    artifacts = dataclasses.replace(
        lexical, text_vectors=vectors, image_features=np.zeros((n, 1), dtype=np.float32),
        has_image=np.zeros(n, dtype=bool), joint=joint, joint_vectors=joint.embed_texts(vectors),
        meta={**lexical.meta, "mode": "full"})
    return ProductSearch(artifacts, text_encoder=encoder)


def test_dense_model_only_for_words_the_graph_does_not_know(dense_shop: ProductSearch) -> None:
    understood = dense_shop.search("black hoodie for my husband", k=1,
                                   sources=("bm25", "text", "graph")).understood
    assert understood["dense"] is False and understood["unknown"] == []
    result = dense_shop.search("a wristwatch for my wife", k=2, sources=("bm25", "text", "graph"))
    assert result.understood["dense"] is True
    assert ["category", "Watches"] in result.understood["concepts"]  # mapped by E5, no alias
    assert [m["via"] for m in result.understood["mappings"]
            if m["value"] == "Watches"] == ["embedding"]
    assert result.hits[0].id == "p6"  # the women's watch
    assert result.understood["dense_text"] == "wristwatch Women"


def test_dense_option_is_checked(workspace: Path) -> None:
    with pytest.raises(ValueError, match="dense must be"):
        ProductSearch(ProductSearch.load(workspace).artifacts, dense="sometimes")
