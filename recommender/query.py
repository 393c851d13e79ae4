"""Query understanding: map the words of a query (Chinese or English) to knowledge-graph nodes.

The graph carries names for attribute values, categories and brands: the English value, Chinese
names (`names_zh`, see `kg/lexicons`) and aliases in any language (`aliases`: synonyms such as
"hoodie" for Sweatshirts, "husband" for Men, transliterations such as 耐克 for Nike), which a
merchant extends through the generic loader (`aliases.csv`). A query is read in steps, each of
which generalises beyond the listed names:

1. Unicode NFKC (full-width letters) and traditional -> simplified Chinese (OpenCC), first;
2. Chinese names and aliases, longest first; English word n-grams against stemmed names, also
   written together or apart ("sun glasses", "flipflops", "t-shirt");
3. spelling correction of words the catalog does not use (SymSpell edit distance over the
   products' words and the graph's names), and one-character corrections of Chinese names;
4. filler ("I need a pair of ... for my", "我想买一双") is dropped from the search text;
5. words still unknown are embedded and mapped to the nearest graph name when the dense model is
   confident (similarity and margin over the runner-up).

The result is constraints (colour=Black, gender=Men, category=Sports Shoes, brand=Nike), an English
rendering, and a record of every step so search can explain how it read the query.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

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
    normalised: str = ""  # after NFKC and traditional -> simplified Chinese
    corrections: list[tuple[str, str]] = field(default_factory=list)  # (typed, corrected)
    mappings: list[dict[str, object]] = field(default_factory=list)  # phrase -> concept, via
    dropped: list[str] = field(default_factory=list)  # filler left out of the search text
    search_text: str = ""  # what BM25 is given: no filler, mapped words as graph values
    dense_text: str = ""  # what the dense model is given: no filler, unknown words as typed
    unknown: list[str] = field(default_factory=list)  # words no step could map

    def explain(self) -> dict[str, object]:
        """How the query was understood, for `GET /search` and `shopgraph search --explain`."""
        return {
            "english": self.english, "matched": self.matched,
            "concepts": [[c.kind, c.value] for c in self.concepts],
            "normalised": self.normalised,
            "converted_script": _CJK.search(self.text) is not None
            and self.normalised != unicodedata.normalize("NFKC", self.text).lower(),
            "corrections": [{"typed": a, "corrected": b} for a, b in self.corrections],
            "mappings": self.mappings, "dropped": self.dropped,
            "constraints": [[[c.kind, c.value] for c in g] for g in self.groups],
            "search_text": self.search_text, "dense_text": self.dense_text,
            "unknown": self.unknown,
        }

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
_CJK_RUN = re.compile(r"[\u3400-\u9fff]+")

# Function words and shopping filler: never a constraint, left out of the search text.
ENGLISH_FILLER = frozenset("""
a an the and or of for to in on at by with from my our your his her their me us him them i i'm
im we you he she it they is are am be was were do does did can could would will should may might
need needs want wants wanted wanting looking look find show give get got buy buying shop shopping
searching search please pair pairs some any something anything one ones kind kinds sort type
types like love loves would like which what where who that this these those there here have has
had sell sells selling good nice new best really very just also too so but if as about around
wear wearing wore use using used go going gift gifts present for get little
""".split())
CHINESE_FILLER = (
    "我想要", "我想买", "我想", "想要", "我要", "帮我找", "帮我", "请推荐", "推荐", "有没有",
    "有哪些", "有什么", "哪些", "需要", "适合", "参加", "送给", "喜欢", "一双", "一条", "一件",
    "一个", "一瓶", "一块", "一副", "几双", "几件", "几条", "我家", "请", "想", "要", "买", "给",
    "找", "挑", "吗", "呢", "吧", "的", "了", "穿", "戴", "用", "会", "新", "双", "条", "件",
    "个", "瓶", "块", "副", "我", "你", "上", "去", "在", "和", "与", "都", "很", "点",
)
# Pronouns refer to someone the query may also name ("my son ... he needs"): the gender they
# stand for counts only when no other phrase names that kind.
PRONOUNS = frozenset({"he", "him", "his", "she", "her", "hers"})
ENGLISH_WORDS = 30_000  # the most frequent English words (SymSpell's list) are never typos
COMMON_WORDS = 3_000  # a brand spelled like one of these ("Only", "Red") must be capitalised
MIN_EMBED_SCORE = 0.83  # cosine of an unknown word to its nearest graph name (E5 queries)
MIN_EMBED_MARGIN = 0.03  # ... and its lead over the nearest name of another concept
MIN_BRAND_PRODUCTS = 20  # brands with fewer products are not embedding targets (startup cost)


def normalise(text: str) -> str:
    """NFKC (full-width letters, compatibility forms), lower case, traditional -> simplified,
    then Hong Kong and Taiwan product words -> the mainland ones (`kg/lexicons/regional_zh`)."""
    text = unicodedata.normalize("NFKC", text).lower()
    if _CJK.search(text):
        text = _t2s()(text)
        for regional, mainland in _regional_words():
            if regional in text:
                text = text.replace(regional, mainland)
    return text


@lru_cache(maxsize=1)
def _regional_words() -> list[tuple[str, str]]:
    """(regional, mainland) pairs, simplified and lower-cased like queries, longest first."""
    from kg.lexicons import LEXICONS
    from kg.schema import DataError

    path = LEXICONS / "regional_zh.tsv"
    pairs: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) != 2 or not all(parts):
            raise DataError("expected 2 tab-separated fields: regional word, mainland word",
                            file=str(path), line=number)
        regional = _t2s()(unicodedata.normalize("NFKC", parts[0]).lower())
        pairs[regional] = parts[1].lower()
    return sorted(pairs.items(), key=lambda pair: (-len(pair[0]), pair[0]))


@lru_cache(maxsize=1)
def _t2s() -> Callable[[str], str]:
    import opencc

    # Taiwan standard with phrases: also regional words (軟體 -> 软件), not only characters
    return opencc.OpenCC("tw2sp").convert


@lru_cache(maxsize=1)
def _english_ranks() -> dict[str, int]:
    """Rank of each of the `ENGLISH_WORDS` most frequent English words (1 = most frequent),
    from the frequency list that ships with symspellpy (no download)."""
    from importlib.resources import files

    ranks: dict[str, int] = {}
    text = files("symspellpy").joinpath("frequency_dictionary_en_82_765.txt").read_text()
    for rank, line in enumerate(text.splitlines()[:ENGLISH_WORDS], start=1):
        ranks[line.split(" ", 1)[0]] = rank
    return ranks


def is_english_word(word: str, top: int = ENGLISH_WORDS) -> bool:
    """Whether `word` is among the `top` most frequent English words (so not a typo)."""
    rank = _english_ranks().get(word.lower())
    return rank is not None and rank <= top


def _names(value: object) -> list[str]:
    """The "|"-separated names of a `names_zh` or `aliases` property (nulls give none)."""
    if not isinstance(value, str):
        return []
    return [n.strip() for n in value.split("|") if n.strip()]


class QueryUnderstanding:
    """Maps query phrases to Concepts using node names and aliases taken from the graph."""

    def __init__(self, english: dict[tuple[str, ...], set[Concept]],
                 chinese: dict[str, set[Concept]], vocabulary: Iterable[str] = (),
                 aliases: Iterable[str] = (), embed: Callable[[list[str]], np.ndarray] | None
                 = None, min_score: float = MIN_EMBED_SCORE,
                 min_margin: float = MIN_EMBED_MARGIN) -> None:
        self._english = english
        # the longest name known, so a long rendered name ("RICE - DRY BAG AND BOX") still
        # matches whole rather than as its first words ("DRY")
        self._max_words = max(map(len, english), default=1)
        # names written together ("sunglasses" for "sun glasses", "flipflops")
        self._joined: dict[str, set[Concept]] = {}
        for words, concepts in english.items():
            joined = "".join(words)
            if len(joined) >= 4:
                self._joined.setdefault(joined, set()).update(concepts)
        self._chinese_names = sorted(chinese, key=lambda name: (-len(name), name))
        self._chinese_lookup = chinese
        self._aliases = {normalise(a) for a in aliases}  # names that are aliases, not values
        self._vocabulary = {_stem(w) for w in vocabulary} | {w for k in english for w in k}
        self._speller: object | None = None
        self._speller_words = {w.lower() for w in vocabulary if w.isalpha()} | {
            w for key in english for w in key if w.isalpha()}
        self._wildcards: dict[str, set[str]] | None = None
        self._pinyin: dict[str, set[str]] | None = None  # toneless pinyin -> Chinese names
        self.embed = embed
        self.min_score, self.min_margin = min_score, min_margin
        self._targets: tuple[list[Concept], np.ndarray] | None = None
        self.small_brands: set[Concept] = set()  # not worth embedding (see MIN_BRAND_PRODUCTS)

    @classmethod
    def from_graph(cls, attributes: pd.DataFrame, categories: pd.DataFrame,
                   brands: pd.DataFrame | None = None, vocabulary: Iterable[str] = (),
                   embed: Callable[[list[str]], np.ndarray] | None = None
                   ) -> QueryUnderstanding:
        """From Attribute (kind, value), Category (name) and Brand (name) nodes, each with
        optional `names_zh` and `aliases`; `vocabulary` is the products' words (for spelling)."""
        english: dict[tuple[str, ...], set[Concept]] = {}
        chinese: dict[str, set[Concept]] = {}
        aliases: list[str] = []

        def add_name(concept: Concept, name: str) -> None:
            name = normalise(name)
            if _CJK.search(name):
                chinese.setdefault(name, set()).add(concept)
                return
            words = tuple(_stem(w) for w in _WORD.findall(name))
            if words:
                english.setdefault(words, set()).add(concept)

        def add(concept: Concept, row: dict) -> None:
            if concept.kind != "brand" or (len(concept.value) >= 3
                                           and concept.value.lower() not in ENGLISH_FILLER):
                add_name(concept, concept.value)
            for name in _names(row.get("names_zh")) + _names(row.get("aliases")):
                add_name(concept, name)
                aliases.append(name)

        for row in attributes.to_dict("records"):
            kind, value = row.get("kind"), row.get("value")
            if isinstance(kind, str) and isinstance(value, str) and not value.isdigit():
                add(Concept(kind, value), row)
        for row in categories.to_dict("records"):
            if isinstance(row.get("name"), str):
                add(Concept(CATEGORY_KIND, row["name"]), row)
        if brands is not None and "name" in brands:
            for row in brands.to_dict("records"):
                if isinstance(row.get("name"), str) and row["name"].strip():
                    add(Concept("brand", row["name"].strip()), row)
        levels = {Concept(CATEGORY_KIND, row["name"]): row.get("level")
                  for row in categories.to_dict("records") if isinstance(row.get("name"), str)}
        for table in (english, chinese):
            for key, concepts in table.items():
                table[key] = _refine(concepts, levels)
        understanding = cls(english, chinese, vocabulary=vocabulary, aliases=aliases,
                            embed=embed)
        if brands is not None and {"name", "products"} <= set(brands.columns):
            small = brands[brands["products"].fillna(0) < MIN_BRAND_PRODUCTS]["name"]
            understanding.small_brands = {Concept("brand", str(n).strip()) for n in small}
        return understanding

    # ---- steps -------------------------------------------------------------------------------
    def _via(self, phrase: str) -> str:
        return "alias" if normalise(phrase) in self._aliases else "name"

    def _correct(self, word: str) -> str | None:
        """The closest catalog word to an unknown English word (SymSpell), or None."""
        if len(word) < 4 or not word.isalpha():
            return None
        if self._speller is None:
            from symspellpy import SymSpell

            speller = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
            for w in self._speller_words:
                speller.create_dictionary_entry(w, 1)
            self._speller = speller
        from symspellpy import Verbosity

        distance = 1 if len(word) <= 5 else 2
        found = self._speller.lookup(word, Verbosity.CLOSEST, max_edit_distance=distance)
        # prefer a graph name among equally close words: "sandles" -> "sandals", not "candles"
        best = sorted(found, key=lambda s: (s.distance, (_stem(s.term),) not in self._english
                                            and _stem(s.term) not in self._joined, -s.count))
        return best[0].term if best and best[0].term != word else None

    def _from_pinyin(self, text: str, parsed: ParsedQuery) -> str:
        """Latin letters typed as pinyin for a Chinese name, alone or beside its other
        characters ("pidai" or "皮dai" -> 皮带, "wei衣" -> 卫衣), replaced by the name.

        Only runs that spell a whole name once joined with neighbouring characters' pinyin and
        that fit exactly one concept. A run that is a name on its own must be 5+ letters and
        no English or catalog word, so "polo", "gel" or "xl" stay as typed."""
        if self._pinyin is None:
            from pypinyin import Style, lazy_pinyin

            self._pinyin = {}
            for name in self._chinese_names:
                if len(name) >= 2 and _CJK_RUN.fullmatch(name):
                    key = "".join(lazy_pinyin(name, style=Style.NORMAL))
                    self._pinyin.setdefault(key, set()).add(name)
        for run in reversed(list(re.finditer(r"[a-z]+", text))):
            word = run.group(0)
            if len(word) < 2 or word in ENGLISH_FILLER:
                continue
            # a word the catalog or English uses stays as typed unless it joins characters
            english = _stem(word) in self._vocabulary or is_english_word(word)
            best: tuple[int, int, int, str] | None = None
            for before in range(4):
                for after in range(4):
                    start, end = run.start() - before, run.end() + after
                    left, right = text[max(start, 0):run.start()], text[run.end():end]
                    if start < 0 or end > len(text) or not all(
                            _CJK_RUN.fullmatch(part) for part in (left, right) if part):
                        continue
                    if not left and not right and (english or len(word) < 5):
                        continue
                    key = "".join(map(_sound, left)) + word + "".join(map(_sound, right))
                    names = self._pinyin.get(key, set())
                    if len({frozenset(self._chinese_lookup[n]) for n in names}) == 1:
                        found = (end - start, -start, end, sorted(names)[0])
                        best = max(best, found) if best else found
            if best is not None:
                start, end = -best[1], best[2]
                parsed.corrections.append((text[start:end], best[3]))
                text = f"{text[:start]}{best[3]}{text[end:]}"
        return text

    def _correct_chinese(self, text: str, exact: list[tuple[int, int, str]]
                         ) -> list[tuple[int, int, str]]:
        """Spans of `text` one character away from a Chinese name, where the two characters
        sound alike (a pinyin keyboard's wrong pick: 运东鞋 -> 运动鞋, 高根鞋 -> 高跟鞋), when
        exactly one concept fits.

        The wrong character must be one no name covers, and a name found inside the window
        (鞋 in 高根鞋) gives way only to the longer corrected one.
        """
        if self._wildcards is None:
            self._wildcards = {}
            for name in self._chinese_names:
                if len(name) >= 2 and _CJK.fullmatch(name[0]) and _CJK.search(name):
                    for i in range(len(name)):
                        self._wildcards.setdefault(name[:i] + "?" + name[i + 1:], set()).add(name)
        covered = np.zeros(len(text), dtype=bool)
        for start, end, _ in exact:
            covered[start:end] = True
        spans: list[tuple[int, int, str]] = []
        taken = np.zeros(len(text), dtype=bool)
        for run in _CJK_RUN.finditer(text):
            for length in range(min(len(run[0]), 6), 1, -1):
                for start in range(run.start(), run.end() - length + 1):
                    end = start + length
                    if taken[start:end].any() or not (~covered[start:end]).any():
                        continue
                    if any(a < end and start < b and not (start <= a and b <= end)
                           for a, b, _ in exact):
                        continue  # would cut a name in two
                    window = text[start:end]
                    fits = {name for i in range(length) if not covered[start + i]
                            for name in self._wildcards.get(
                                window[:i] + "?" + window[i + 1:], ())
                            if _sound(name[i]) == _sound(window[i])}
                    if len({frozenset(self._chinese_lookup[n]) for n in fits}) == 1:
                        taken[start:end] = True
                        spans.append((start, end, sorted(fits)[0]))
        return spans

    def _targets_matrix(self) -> tuple[list[Concept], np.ndarray] | None:
        """Every graph value, embedded once (E5 query side), for mapping unknown words."""
        if self._targets is None and self.embed is not None:
            concepts = sorted({c for group in self._english.values() for c in group
                               if c not in self.small_brands}, key=_order)
            if not concepts:
                return None
            vectors = np.asarray(self.embed([c.value for c in concepts]), dtype=np.float32)
            self._targets = (concepts, vectors)
        return self._targets

    def prepare(self) -> None:
        """Build the lazy parts now (a server does it before its first query): the graph's
        names embedded, the spelling index, the Chinese correction index and pinyin."""
        self._targets_matrix()
        self._correct("warmup")
        self._correct_chinese("热身", [])
        self._from_pinyin("reshen", ParsedQuery(text=""))
        _sound("热")

    def _nearest(self, phrases: list[str], also: list[str] = ()
                 ) -> list[tuple[Concept, float] | None]:
        """The graph value each phrase means, when the dense model is confident, else None.
        `also` is encoded in the same call (and dropped): texts the caller will need."""
        targets = self._targets_matrix()
        if targets is None or not phrases:
            return [None] * len(phrases)
        concepts, vectors = targets
        encoded = np.asarray(self.embed([*also, *phrases]), dtype=np.float32)
        scores = encoded[len(also):] @ vectors.T
        out: list[tuple[Concept, float] | None] = []
        for row in scores:
            order = np.argsort(-row)[:2]
            best, second = float(row[order[0]]), float(row[order[1]]) if len(order) > 1 else 0.0
            ok = best >= self.min_score and best - second >= self.min_margin
            out.append((concepts[order[0]], round(best, 4)) if ok else None)
        return out

    # ---- the parse ---------------------------------------------------------------------------
    def parse(self, text: str, embed_unknown: bool = True) -> ParsedQuery:
        """Concepts named in `text`, an English rendering, and how each was found."""
        parsed = ParsedQuery(text=text)
        normalised = self._from_pinyin(normalise(text), parsed)
        parsed.normalised = normalised
        rendered = normalised
        unknown_cjk: list[str] = []
        if _CJK.search(normalised):
            rendered, unknown_cjk = self._chinese(normalised, parsed)
        words = []
        for m in _WORD.finditer(rendered):
            word = m.group(0)
            known = _stem(word) in self._vocabulary or _stem(word) in self._joined
            # "sports-shoes", "tee-shirts": the parts, unless the hyphenated word is known
            words.extend([word] if known or "-" not in word else
                         [p for p in word.split("-") if p])
        # spelling: only words neither the catalog nor the graph uses, and not filler
        fixed: list[str] = []
        stems = [_stem(w) for w in words]
        for i, word in enumerate(words):
            low = word.lower()
            # part of a name written apart ("sweat shirts", "sun glasses") is no typo
            apart = any("".join(stems[a:a + n]) in self._joined
                        for n in (2, 3) for a in range(max(0, i - n + 1), i + 1)
                        if a + n <= len(stems))
            if (apart or low in ENGLISH_FILLER or stems[i] in self._vocabulary
                    or stems[i] in self._joined or is_english_word(low)):
                fixed.append(word)
                continue
            corrected = self._correct(low)
            if corrected is not None:
                parsed.corrections.append((word, corrected))
                fixed.append(corrected)
            else:
                fixed.append(word)
        # a pronoun stands for someone: its gender counts only if nothing else names one
        # (a first, throw-away pass finds the other phrases; only queries with a pronoun pay)
        named: set[str] = set()
        if any(w.lower() in PRONOUNS for w in fixed):
            scratch = ParsedQuery(text=text, corrections=list(parsed.corrections))
            self._english_ngrams(fixed, scratch)
            named = {str(m["kind"]) for m in parsed.mappings + scratch.mappings
                     if str(m["phrase"]).lower() not in PRONOUNS}
        english_words, residual = self._english_ngrams(fixed, parsed, named)
        unknown = [w for w in residual if w.lower() not in ENGLISH_FILLER
                   and _stem(w) not in self._vocabulary]
        # the dense model reads the query without filler, unknown words as typed (it may know
        # them); nothing understood at all: the (simplified) text as typed
        parsed.dense_text = " ".join(
            [w for w, keep in english_words if keep] + unknown_cjk) or normalised
        if (unknown or unknown_cjk) and embed_unknown and self.embed is not None:
            self._embed_unknown(unknown, unknown_cjk, parsed, english_words)
        else:
            parsed.unknown.extend(unknown + unknown_cjk)
        parsed.english = (" ".join(rendered.split()) if _CJK.search(normalised)
                          else " ".join(w for w, _ in english_words))
        parsed.search_text = " ".join(w for w, keep in english_words if keep) or normalised
        return parsed

    def _chinese(self, text: str, parsed: ParsedQuery) -> tuple[str, list[str]]:
        """Chinese names (longest first, then one-character corrections) rendered in English;
        returns the rendering and the unknown runs left once filler is taken out."""
        exact: list[tuple[int, int, str]] = []
        taken = np.zeros(len(text), dtype=bool)
        for name in self._chinese_names:
            start = text.find(name)
            while start >= 0:
                end = start + len(name)
                if not taken[start:end].any():
                    taken[start:end] = True
                    exact.append((start, end, name))
                start = text.find(name, end)
        fixed = self._correct_chinese(text, exact)
        for start, end, name in fixed:
            parsed.corrections.append((text[start:end], name))
        spans = fixed + [(a, b, n) for a, b, n in exact
                         if not any(a < e and s < b for s, e, _ in fixed)]
        rendered = text
        for start, end, name in sorted(spans, reverse=True):
            concepts = self._chinese_lookup[name]
            rendered = f"{rendered[:start]} {_display(concepts)} {rendered[end:]}"
            if name not in parsed.matched:
                parsed.matched.append(name)
                for concept in sorted(concepts, key=_order):
                    parsed.mappings.append({"phrase": name, "kind": concept.kind,
                                            "value": concept.value, "via": self._via(name)})
        unknown = []
        for run in _CJK_RUN.findall(rendered):
            kept = _strip_chinese_filler(run)
            dropped = run if not kept else None
            if dropped:
                parsed.dropped.append(dropped)
            elif len(kept) >= 2:
                unknown.append(kept)
                if kept != run:
                    parsed.dropped.append(run)
        return rendered, unknown

    def _english_ngrams(self, words: list[str], parsed: ParsedQuery,
                        named_kinds: set[str] = frozenset()
                        ) -> tuple[list[tuple[str, bool]], list[str]]:
        """Word n-grams against stemmed names (apart or written together), longest first.
        Returns the rendering as (word, kept in the search text) and the unmapped words.

        A pronoun whose concepts' kinds another phrase names (`named_kinds`) is filler, and a
        one-word brand spelled like a common English word ("only", "red") counts only where
        the query capitalises it ("ONLY jeans", not "she only wants pink")."""
        stems = [_stem(w) for w in words]
        typed = {w for w in _WORD.findall(parsed.text) if w[:1].isupper()}
        out: list[tuple[str, bool]] = []
        residual: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(max(self._max_words, 3), len(words) - i), 0, -1):
                key = tuple(stems[i:i + n])
                concepts = self._english.get(key) or (self._joined.get("".join(key))
                                                     if n > 1 or len(key[0]) >= 4 else None)
                if key == ("",) or not concepts:
                    continue
                word = words[i].lower()
                if n == 1 and word in PRONOUNS and {c.kind for c in concepts} <= named_kinds:
                    continue
                if (n == 1 and all(c.kind == "brand" for c in concepts)
                        and is_english_word(word, COMMON_WORDS)
                        and not any(t.lower() == word for t in typed)):
                    continue
                exact = key in self._english
                group = sorted(concepts, key=_order)
                if group not in parsed.groups:
                    parsed.groups.append(group)
                phrase = " ".join(words[i:i + n])
                via = self._via(phrase)
                if any(w.lower() in {b for _, b in parsed.corrections} for w in words[i:i + n]):
                    via = "spelling"
                if phrase not in parsed.matched:
                    parsed.matched.append(phrase)
                    for concept in group:
                        parsed.mappings.append({"phrase": phrase, "kind": concept.kind,
                                                "value": concept.value, "via": via})
                if via == "name" and exact:
                    out.extend((w, True) for w in words[i:i + n])
                else:
                    out.append((_display(set(group)), True))
                i += n
                break
            else:
                word = words[i]
                filler = word.lower() in ENGLISH_FILLER
                if filler:
                    parsed.dropped.append(word)
                else:
                    residual.append(word)
                out.append((word, not filler))
                i += 1
        return out, residual

    def _embed_unknown(self, english: list[str], chinese: list[str], parsed: ParsedQuery,
                       out: list[tuple[str, bool]]) -> None:
        """Map unknown words with one encoder call (the dense query text rides along, so
        search finds its vector already encoded)."""
        phrases = english + chinese
        for phrase, found in zip(phrases, self._nearest(phrases, [parsed.dense_text]),
                                 strict=True):
            if found is None:
                parsed.unknown.append(phrase)
                continue
            concept, score = found
            if [concept] not in parsed.groups:
                parsed.groups.append([concept])
            parsed.matched.append(phrase)
            parsed.mappings.append({"phrase": phrase, "kind": concept.kind,
                                    "value": concept.value, "via": "embedding",
                                    "score": score})
            if phrase in chinese:
                out.append((concept.value, True))
            else:
                out[:] = [(concept.value, True) if w == phrase else (w, k) for w, k in out]


def _refine(concepts: set[Concept], levels: dict[Concept, object]) -> set[Concept]:
    """What one name means when it names several nodes: a brand that shares its name with a
    product type or attribute ("Denim") gives way to them, and of categories with one name at
    several levels (Sandal > Sandals) the most specific is meant."""
    if any(c.kind != "brand" for c in concepts):
        concepts = {c for c in concepts if c.kind != "brand"}
    categories = {c for c in concepts if c.kind == CATEGORY_KIND}
    if len(categories) > 1:
        def level(c: Concept) -> float:
            value = levels.get(c)
            return float(value) if isinstance(value, int | float) and value == value else -1.0

        deepest = max(level(c) for c in categories)
        concepts = {c for c in concepts if c.kind != CATEGORY_KIND or level(c) == deepest}
    return concepts


@lru_cache(maxsize=65536)
def _sound(char: str) -> str:
    """A character's pinyin without tone: what a pinyin keyboard typed for it."""
    from pypinyin import Style, lazy_pinyin

    return "".join(lazy_pinyin(char, style=Style.NORMAL))


def _strip_chinese_filler(text: str) -> str:
    for word in CHINESE_FILLER:
        text = text.replace(word, "")
    return text


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
