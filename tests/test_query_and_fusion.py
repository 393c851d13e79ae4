"""Query understanding (Chinese and English -> graph concepts) and score fusion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kg.lexicons import load_lexicon
from recommender.fusion import fuse, normalise
from recommender.query import Concept, QueryUnderstanding, match_scores


@pytest.fixture(scope="module")
def understanding() -> QueryUnderstanding:
    lexicon = load_lexicon("fashion_zh")
    attributes = lexicon[lexicon["kind"].isin(["colour", "gender", "usage", "season"])]
    categories = lexicon[lexicon["kind"].isin(["masterCategory", "subCategory", "articleType"])]
    return QueryUnderstanding.from_graph(attributes, categories.rename(columns={"value": "name"}))


@pytest.mark.parametrize(("query", "english", "expected"), [
    ("黑色运动鞋", "Black Sports Shoes",
     [("colour", "Black"), ("category", "Sports Shoes")]),
    ("男士 藏青色 衬衫", "Men Navy Blue Shirts",
     [("gender", "Men"), ("colour", "Navy Blue"), ("category", "Shirts")]),
    ("适合休闲的白色T恤", "适合 Casual 的 White Tshirts",
     [("usage", "Casual"), ("colour", "White"), ("category", "Tshirts")]),
    ("women's casual shoes", "women's casual shoes",
     [("gender", "Women"), ("category", "Casual Shoes")]),
    ("navy blue t-shirts for men", "navy blue t-shirts for men",
     [("colour", "Navy Blue"), ("category", "Tshirts"), ("gender", "Men")]),
])
def test_parse(understanding, query, english, expected) -> None:
    parsed = understanding.parse(query)
    assert parsed.english == english
    assert [(c.kind, c.value) for c in parsed.concepts] == expected


def test_longest_match_wins(understanding) -> None:
    # "Navy Blue" is one colour, not the colour Blue plus a stray word
    assert [c.value for c in understanding.parse("navy blue").concepts] == ["Navy Blue"]
    assert understanding.parse("藏青色").concepts == [Concept("colour", "Navy Blue")]
    assert understanding.parse("something unrelated").groups == []


def test_match_scores_counts_satisfied_phrases(understanding) -> None:
    catalog = pd.DataFrame({
        "id": ["a", "b", "c"],
        "colour": ["Black", "Black", "White"],
        "gender": ["Men", "Women", "Men"],
        "category": ["Footwear > Shoes > Sports Shoes", "Footwear > Shoes > Casual Shoes",
                     "Footwear > Shoes > Sports Shoes"],
    })
    scores = match_scores(catalog, understanding.parse("男士黑色运动鞋").groups)
    assert scores.tolist() == pytest.approx([1.0, 1 / 3, 2 / 3])


def test_fusion_methods() -> None:
    scores = {"a": np.array([3.0, 1.0, 2.0]), "b": np.array([0.1, 0.9, 0.5])}
    assert normalise(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]
    assert fuse(scores, "weighted").tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert fuse(scores, "weighted", {"a": 2.0}).tolist() == pytest.approx([2.0, 1.0, 1.5])
    assert fuse(scores, "max").tolist() == pytest.approx([1.0, 1.0, 0.5])
    rrf = fuse(scores, "rrf")
    assert rrf[2] == pytest.approx(2 / 62) and rrf[0] == pytest.approx(1 / 61 + 1 / 63)
    # a constant source carries no ranking information and changes nothing
    assert fuse({**scores, "c": np.zeros(3)}, "rrf").tolist() == pytest.approx(rrf.tolist())
    with pytest.raises(ValueError):
        fuse(scores, "median")
