"""Query understanding: map the words of a query (Chinese or English) to knowledge-graph nodes.

The graph carries English and Chinese names for attribute values and categories (see
`kg/lexicons`). A query such as "黑色 男士 运动鞋" or "black sports shoes for men" is scanned for
those names, longest match first, and becomes constraints (colour=Black, gender=Men,
articleType=Sports Shoes) plus an English rendering ("Black Men Sports Shoes") that lexical and
dense retrieval can use. This is how a Chinese query reaches an English catalog.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CATEGORY_KIND = "category"


@dataclass(frozen=True)
class Concept:
    """A graph node a query phrase refers to: an attribute value or a category name."""

    kind: str  # attribute kind ("colour", "gender", ...) or "category"
    value: str  # English value as stored in the graph


@dataclass
class ParsedQuery:
    """What a query asks for, as graph concepts, plus its English rendering."""

    text: str
    groups: list[list[Concept]] = field(default_factory=list)  # one group per mapped phrase
    english: str = ""
    matched: list[str] = field(default_factory=list)  # the query phrases that were mapped

    @property
    def concepts(self) -> list[Concept]:
        """Every concept named, in phrase order (a phrase may name several, e.g. Dress/Dresses)."""
        return [c for group in self.groups for c in group]

    @property
    def translated(self) -> bool:
        return self.english != self.text


def _stem(word: str) -> str:
    """A tiny English stemmer for catalog words: plurals and possessives ("men's", "shirts")."""
    word = word.lower().replace("-", "").replace("'s", "").replace("’s", "")
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ses", "xes", "shes", "ches")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")
_CJK = re.compile(r"[\u3400-\u9fff]")


class QueryUnderstanding:
    """Maps query phrases to Concepts using node names taken from the graph."""

    def __init__(self, english: dict[tuple[str, ...], set[Concept]],
                 chinese: dict[str, set[Concept]]) -> None:
        self._english = english
        # the longest name known, so a long rendered name ("RICE - DRY BAG AND BOX") still
        # matches whole rather than as its first words ("DRY")
        self._max_words = max(map(len, english), default=1)
        self._chinese_names = sorted(chinese, key=lambda name: (-len(name), name))
        self._chinese_lookup = chinese

    @classmethod
    def from_graph(cls, attributes: pd.DataFrame, categories: pd.DataFrame
                   ) -> QueryUnderstanding:
        """From Attribute nodes (kind, value, names_zh) and Category nodes (name, names_zh)."""
        english: dict[tuple[str, ...], set[Concept]] = {}
        chinese: dict[str, set[Concept]] = {}

        def add(concept: Concept, names_zh: object) -> None:
            words = tuple(_stem(w) for w in _WORD.findall(concept.value))
            if words:
                english.setdefault(words, set()).add(concept)
            if isinstance(names_zh, str):
                for name in names_zh.split("|"):
                    if name.strip():
                        chinese.setdefault(name.strip().lower(), set()).add(concept)

        for row in attributes.to_dict("records"):
            kind, value = row.get("kind"), row.get("value")
            if isinstance(kind, str) and isinstance(value, str) and not value.isdigit():
                add(Concept(kind, value), row.get("names_zh"))
        for row in categories.to_dict("records"):
            if isinstance(row.get("name"), str):
                add(Concept(CATEGORY_KIND, row["name"]), row.get("names_zh"))
        return cls(english, chinese)

    def parse(self, text: str) -> ParsedQuery:
        """Concepts named in `text` (longest phrases first) and an English rendering."""
        parsed = ParsedQuery(text=text)
        rendered = text
        # Chinese: substring matches, longest names first, without overlaps
        if _CJK.search(text):
            taken = np.zeros(len(text), dtype=bool)
            spans: list[tuple[int, int, str]] = []
            lowered = text.lower()
            for name in self._chinese_names:
                start = lowered.find(name)
                while start >= 0:
                    end = start + len(name)
                    if not taken[start:end].any():
                        taken[start:end] = True
                        spans.append((start, end, name))
                    start = lowered.find(name, end)
            for start, end, name in sorted(spans, reverse=True):
                value = _display(self._chinese_lookup[name])
                rendered = f"{rendered[:start]} {value} {rendered[end:]}"
                parsed.matched.append(name)  # its concepts join via the English pass below
        # English: word n-grams against stemmed node names, longest first
        words = [(m.group(0), _stem(m.group(0))) for m in _WORD.finditer(rendered)]
        i = 0
        while i < len(words):
            for n in range(min(self._max_words, len(words) - i), 0, -1):
                key = tuple(stem for _, stem in words[i:i + n])
                if key in self._english:
                    group = sorted(self._english[key], key=_order)
                    if group not in parsed.groups:
                        parsed.groups.append(group)
                    phrase = " ".join(w for w, _ in words[i:i + n])
                    if phrase not in parsed.matched:
                        parsed.matched.append(phrase)
                    i += n
                    break
            else:
                i += 1
        parsed.english = " ".join(rendered.split())
        return parsed


def _order(concept: Concept) -> tuple[str, str]:
    return concept.kind, concept.value


def _display(concepts: set[Concept]) -> str:
    """The English value to put in place of a Chinese name (all its concepts share it)."""
    return sorted(concepts, key=_order)[0].value


def match_scores(
    catalog: pd.DataFrame, groups: list[list[Concept]],
    mask: Callable[[pd.DataFrame, Concept], np.ndarray] | None = None,
) -> np.ndarray:
    """Per product, the share of the query's phrases it satisfies (the graph relevance).

    A phrase (group) is satisfied when the product carries any of its concepts. `mask`
    replaces `concept_mask`, e.g. with a cached lookup when the catalog is searched often.
    """
    if not groups:
        return np.zeros(len(catalog), dtype=np.float32)
    mask = mask or concept_mask
    total = np.zeros(len(catalog), dtype=np.float32)
    for group in groups:
        hit = np.zeros(len(catalog), dtype=bool)
        for concept in group:
            hit |= mask(catalog, concept)
        total += hit
    return total / len(groups)


def concept_mask(catalog: pd.DataFrame, concept: Concept) -> np.ndarray:
    """Which catalog rows carry `concept` (an attribute value, or a category on their path)."""
    if concept.kind == CATEGORY_KIND:
        column = catalog.get("category")
        if column is None:
            return np.zeros(len(catalog), dtype=bool)
        parts = column.fillna("").astype(str)
        pattern = rf"(?:^|> ){re.escape(concept.value)}(?: >|$)"
        return parts.str.contains(pattern, regex=True).to_numpy(bool)
    column = catalog.get(concept.kind)
    if column is None:
        return np.zeros(len(catalog), dtype=bool)
    values = column.fillna("").astype(str)
    pattern = rf"(?:^|\|){re.escape(concept.value)}(?:\||$)"
    return values.str.contains(pattern, regex=True).to_numpy(bool)
