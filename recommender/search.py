"""Multimodal product search: BM25 + dense text + joint-space image + graph, fused.

A text query is first understood against the knowledge graph (`recommender.query`): its words
become graph concepts (colour, gender, category, ...) and an English rendering, so Chinese and
English queries reach the same products. Candidates come from each source (BM25 over the
products' English documents, E5 dense retrieval, the joint text-image space, and the products
that satisfy the query's concepts); every candidate is then scored by every source and the
scores are fused (`recommender.fusion`). An image query searches the joint space and also
votes the article type of its nearest neighbours into a graph constraint, so it finds both
visually similar and same-type products; a text+image query combines both.

Over a lexical build (`recommender.content.build_lexical`, no vectors) only the BM25 and graph
sources score, with the same query understanding, fusion and filters, and no encoder is ever
loaded; an image query raises `NoVectorsError`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recommender.content import NO_VECTORS_HINT, ContentArtifacts, NoVectorsError, content_dir
from recommender.fusion import fuse, normalise
from recommender.query import (
    Concept,
    ParsedQuery,
    QueryUnderstanding,
    concept_mask,
    match_scores,
)

SOURCES = ("bm25", "text", "image", "graph")
QUERY_CACHE_SIZE = 10_000
DEFAULT_WEIGHTS = {"bm25": 0.5, "text": 1.0, "image": 0.3, "graph": 1.0}
VECTOR_SOURCES = ("text", "image")  # what a lexical build cannot score


@dataclass
class SearchHit:
    """One result: the product, its fused score and what each source thought of it."""

    id: str
    score: float
    title: str
    sources: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), "title": self.title,
                "sources": {k: round(v, 6) for k, v in self.sources.items()}}


@dataclass
class SearchResult:
    """Hits plus how the query was understood (for explanations and debugging)."""

    query: str | None
    hits: list[SearchHit]
    understood: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "understood": self.understood,
                "hits": [h.to_dict() for h in self.hits]}


_TOKEN = re.compile(r"[a-z0-9]+")


class ProductSearch:
    """Search over one catalog's content artifacts; build with `ProductSearch.load(workspace)`."""

    def __init__(self, artifacts: ContentArtifacts, text_encoder: Any = None,
                 image_encoder: Any = None, candidates: int = 200,
                 fusion: str = "weighted", weights: dict[str, float] | None = None,
                 dense: str = "auto") -> None:
        """`dense`: "auto" encodes a text query only when some of its words are not understood
        through the graph (or none are), "always" encodes every text query."""
        import bm25s

        if dense not in ("auto", "always"):
            raise ValueError(f"dense must be 'auto' or 'always', not {dense!r}")
        self.dense = dense

        self.artifacts = artifacts
        self.catalog = artifacts.catalog.reset_index(drop=True)
        self.ids = np.array(artifacts.ids)
        self.candidates = candidates
        self.fusion = fusion
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self._text_encoder, self._image_encoder = text_encoder, image_encoder
        self.understanding = QueryUnderstanding.from_graph(
            artifacts.attributes, artifacts.categories, brands=_brands(artifacts),
            vocabulary=_vocabulary(artifacts.documents),
            embed=None if artifacts.lexical else self._embed_phrases)
        self._stemmer = _english_stemmer()
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenize(artifacts.documents, stopwords="en",
                                       stemmer=self._stemmer, show_progress=False),
                        show_progress=False)
        self.lexical = artifacts.lexical
        self.text_index = self.joint_index = None
        if artifacts.text_vectors is not None and artifacts.joint_vectors is not None:
            self.text_index = _index(self.ids, artifacts.text_vectors, self.catalog)
            self.joint_index = _index(self.ids, artifacts.joint_vectors, self.catalog)
        self._masks: dict[Concept, np.ndarray] = {}
        self._row_cache: dict[str, int] | None = None
        self._query_vectors: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, workspace: Path, **kwargs: Any) -> ProductSearch:
        return cls(ContentArtifacts.load(content_dir(Path(workspace))), **kwargs)

    # ---- encoders (loaded on first use: a pure BM25/graph query needs neither) --------------
    # Over a lexical build both are None: there are no vectors to compare an encoding with.
    @property
    def text_encoder(self) -> Any:
        if self._text_encoder is None and not self.lexical:
            from encoders.text import load_text_encoder

            self._text_encoder = load_text_encoder(self.artifacts.meta.get("text_spec", "e5"))
        return self._text_encoder

    @property
    def image_encoder(self) -> Any:
        if self._image_encoder is None and not self.lexical:
            from encoders.image import load_image_encoder

            self._image_encoder = load_image_encoder(
                self.artifacts.meta.get("image_spec", "efficientnet-lite0"))
        return self._image_encoder

    # ---- per-source scores over all products -----------------------------------------------
    def _bm25_scores(self, text: str) -> np.ndarray:
        import bm25s

        tokens = bm25s.tokenize([text], stopwords="en", stemmer=self._stemmer,
                                show_progress=False, return_ids=False)[0]
        if not tokens:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(tokens), dtype=np.float32)

    def _concept_mask(self, catalog: pd.DataFrame, concept: Concept) -> np.ndarray:
        """`concept_mask`, remembered per concept: the catalog does not change under us."""
        if concept not in self._masks:
            self._masks[concept] = concept_mask(catalog, concept)
        return self._masks[concept]

    def _filter_mask(self, category: str | None, brand: str | None) -> np.ndarray | None:
        if category is None and brand is None:
            return None
        mask = np.ones(len(self.ids), dtype=bool)
        if category is not None:
            path = self.catalog.get("category", pd.Series([""] * len(self.ids))).fillna("")
            mask &= (path == category) | path.str.startswith(category + " > ")
        if brand is not None:
            names = self.catalog.get("brand", pd.Series([""] * len(self.ids))).fillna("")
            mask &= names.str.lower() == brand.lower()
        return mask

    # ---- the search ------------------------------------------------------------------------
    def search(self, query: str | None = None, image: Any = None, k: int = 10,
               category: str | None = None, brand: str | None = None,
               sources: tuple[str, ...] = SOURCES, fusion: str | None = None,
               weights: dict[str, float] | None = None) -> SearchResult:
        """Top-k products for a text query, an image (PIL image or path), or both."""
        if not (query and query.strip()) and image is None:
            raise ValueError("give a text query, an image, or both")
        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown sources {sorted(unknown)}; expected some of {SOURCES}")
        if self.lexical:
            sources = self._lexical_sources(sources, image)
        n = len(self.ids)
        allowed = self._filter_mask(category, brand)
        filters = {k: v for k, v in (("category", category), ("brand", brand)) if v} or None
        scores: dict[str, np.ndarray] = {}
        candidates: set[int] = set()
        understood: dict[str, Any] = {}
        groups: list[list[Concept]] = []
        if query and query.strip():
            parsed: ParsedQuery = self.understanding.parse(query.strip())
            groups = [list(g) for g in parsed.groups]
            understood = parsed.explain()
            if "bm25" in sources:
                scores["bm25"] = self._bm25_scores(parsed.search_text)
                # lexically, a product sharing no word with the query is no candidate at all
                candidates |= _top(scores["bm25"], self.candidates, allowed,
                                   positive=self.lexical)
            # a query the graph understood word for word needs no dense model (~20-60 ms of
            # encoding on a busy CPU): graph + BM25 rank it; words the graph does not know call
            # it in (when E5 mapped them, the query's vector came in the same encoder call)
            use_dense = (self.dense == "always" or bool(parsed.unknown) or not parsed.groups
                         or any(m["via"] == "embedding" for m in parsed.mappings)
                         or image is not None)  # words beside a photo: both in the joint space
            understood["dense"] = use_dense and bool({"text", "image"} & set(sources))
            if use_dense and ("text" in sources or "image" in sources):
                q = self._encode_query(parsed.dense_text)
                if "text" in sources:
                    scores["text"] = self.artifacts.text_vectors @ q[0]
                    candidates |= self._from_index(self.text_index, q, filters)
                if "image" in sources:
                    qj = self.artifacts.joint.embed_texts(q)
                    scores["image"] = self.artifacts.joint_vectors @ qj[0]
                    candidates |= self._from_index(self.joint_index, qj, filters)
        if image is not None:
            zi = self._embed_image(image)
            image_scores = self.artifacts.joint_vectors @ zi
            scores["image"] = image_scores + scores.get("image", 0)
            near = _top(image_scores, self.candidates, allowed)
            candidates |= near
            votes = self._type_votes(image_scores, allowed)
            if votes is not None:
                groups.append([votes])
                understood["image_type"] = votes.value
        if "graph" in sources and groups:
            scores["graph"] = match_scores(self.catalog, groups, self._concept_mask)
            # among equal graph matches take the textually closest (dense, else BM25)
            closest = scores["text"] if "text" in scores else normalise(
                scores.get("bm25", np.zeros(n)))
            candidates |= _top(scores["graph"] + 1e-3 * closest, self.candidates, allowed,
                               positive=True)
        if not scores:
            raise ValueError("no source can score this query; enable more sources")
        if allowed is not None:
            candidates = {i for i in candidates if allowed[i]}
        rows = np.array(sorted(candidates), dtype=np.int64)
        if len(rows) == 0:
            return SearchResult(query, [], understood)
        per_source = {name: s[rows] for name, s in scores.items()}
        fused = fuse(per_source, fusion or self.fusion, weights or self.weights)
        order = np.argsort(-fused, kind="stable")[:k]
        titles = self.catalog.get("title", pd.Series([""] * n))
        hits = [
            SearchHit(str(self.ids[rows[j]]), float(fused[j]),
                      "" if pd.isna(titles.iloc[rows[j]]) else str(titles.iloc[rows[j]]),
                      {name: float(v[j]) for name, v in per_source.items()})
            for j in order
        ]
        return SearchResult(query, hits, understood)

    @staticmethod
    def _lexical_sources(sources: tuple[str, ...], image: Any) -> tuple[str, ...]:
        """The requested sources a lexical build can score; NoVectorsError when none can."""
        if image is not None:
            raise NoVectorsError("image search needs the content vectors, and this catalog "
                                 f"has a lexical build (BM25 + graph) only: {NO_VECTORS_HINT}")
        kept = tuple(s for s in sources if s not in VECTOR_SOURCES)
        if not kept:
            raise NoVectorsError(f"sources {sorted(sources)} need the content vectors, and this "
                                 f"catalog has a lexical build (BM25 + graph) only: "
                                 f"{NO_VECTORS_HINT}")
        return kept

    def _encode_query(self, text: str) -> np.ndarray:
        """E5 query vector, remembered: shoppers repeat queries and encoding costs ~50 ms."""
        if text not in self._query_vectors:
            if len(self._query_vectors) >= QUERY_CACHE_SIZE:
                self._query_vectors.pop(next(iter(self._query_vectors)))
            self._query_vectors[text] = self.text_encoder.encode_queries([text])
        return self._query_vectors[text]

    def _embed_phrases(self, phrases: list[str]) -> np.ndarray:
        """E5 query vectors for query understanding (unknown words, graph names), remembered."""
        todo = [p for p in dict.fromkeys(phrases) if p not in self._query_vectors]
        if todo:
            for phrase, vector in zip(todo, self.text_encoder.encode_queries(todo), strict=True):
                if len(self._query_vectors) >= QUERY_CACHE_SIZE:
                    self._query_vectors.pop(next(iter(self._query_vectors)))
                self._query_vectors[phrase] = vector[None, :]
        return np.vstack([self._query_vectors[p] for p in phrases])

    def _from_index(self, index: Any, vectors: np.ndarray, filters: dict[str, str] | None
                    ) -> set[int]:
        found = index.search(vectors, k=self.candidates, filters=filters)[0]
        return {self._row[pid] for pid, _ in found}

    @property
    def _row(self) -> dict[str, int]:
        if self._row_cache is None:
            self._row_cache = {pid: i for i, pid in enumerate(self.ids)}
        return self._row_cache

    def _embed_image(self, image: Any) -> np.ndarray:
        from PIL import Image

        if isinstance(image, str | Path):
            with Image.open(image) as img:
                picture = img.convert("RGB")
        else:
            picture = image
        features = self.image_encoder.encode_images([picture])
        return self.artifacts.joint.embed_images(features)[0]

    def _type_votes(self, image_scores: np.ndarray, allowed: np.ndarray | None
                    ) -> Concept | None:
        """The article type most common among the photo's 10 nearest products with photos."""
        scored = np.where(self.artifacts.has_image, image_scores, -np.inf)
        if allowed is not None:
            scored = np.where(allowed, scored, -np.inf)
        near = np.argsort(-scored)[:10]
        paths = self.catalog.get("category")
        if paths is None:
            return None
        names = [str(paths.iloc[i]).split(" > ")[-1] for i in near
                 if np.isfinite(scored[i]) and isinstance(paths.iloc[i], str)]
        if not names:
            return None
        return Concept("category", Counter(names).most_common(1)[0][0])


def _brands(artifacts: ContentArtifacts) -> pd.DataFrame:
    """Brand nodes (with aliases) when the build saved them, else the catalog's brand names."""
    counts = artifacts.catalog.get("brand", pd.Series([], dtype=object)).dropna().value_counts()
    if artifacts.brands is not None and "name" in artifacts.brands:
        return artifacts.brands.assign(products=artifacts.brands["name"].map(counts).fillna(0))
    return pd.DataFrame({"name": list(counts.index), "products": counts.to_numpy()})


def _vocabulary(documents: list[str], min_count: int = 2) -> list[str]:
    """Words in at least `min_count` product documents: what spelling correction may suggest."""
    counts: Counter[str] = Counter()
    for document in documents:
        counts.update(set(_TOKEN.findall(document.lower())))
    return [w for w, n in counts.items() if n >= min_count and not w.isdigit()]


def _top(scores: np.ndarray, k: int, allowed: np.ndarray | None, positive: bool = False
         ) -> set[int]:
    values = scores if allowed is None else np.where(allowed, scores, -np.inf)
    k = min(k, len(values))
    if k <= 0:
        return set()
    top = np.argpartition(-values, k - 1)[:k]
    keep = np.isfinite(values[top]) & ((values[top] > 0) if positive else True)
    return set(top[keep].tolist())


def _index(ids: np.ndarray, vectors: np.ndarray, catalog: pd.DataFrame) -> Any:
    from recommender.index import VectorIndex

    columns = [c for c in ("id", "category", "brand") if c in catalog]
    return VectorIndex.build(list(ids), np.ascontiguousarray(vectors, dtype=np.float32),
                             attributes=catalog[columns])


def _english_stemmer() -> Any:
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:  # pragma: no cover - PyStemmer is a dependency
        return None
