"""Content artifacts for a loaded workspace: product texts, vectors, the joint space, indexes.

`build_content` is the search part of `shopgraph train`: it flattens each product's graph
context into an English document, encodes documents (E5 passages) and photos (EfficientNet),
trains the joint text-image space on the products that have both, and writes everything under
`WORKSPACE/artifacts/content/`. Encodings are cached by content hash, so a re-run only encodes
what changed.

A product's content vector (the GNN's input) fuses its modalities: the L2-normalised
concatenation of its document embedding and its joint-space vector, where the joint vector
comes from the photo when there is one and from the text tower otherwise (both towers map into
the same space, so a missing photo leaves no hole).

`build_lexical` is the encoder-free variant (`shopgraph train --no-content`): the same catalog,
documents and graph tables with no vectors, enough for BM25 + graph search in seconds where
encoding a large catalog takes the better part of an hour on a CPU. Its meta says
`"mode": "lexical"`; anything that needs vectors raises `NoVectorsError`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from encoders.joint import JointConfig, JointSpace
from kg.export import export_graph, product_catalog
from kg.schema import ATTRIBUTE, BRAND, CATEGORY
from kg.store import GraphStore

CONTENT_DIR = ("artifacts", "content")
ATTRIBUTE_ORDER = ("colour", "gender", "usage", "season")
HOLDOUT_SHARE = 0.10
FULL, LEXICAL = "full", "lexical"  # meta["mode"]; artifacts without a mode are full
VECTOR_FILES = ("text_vectors.npy", "image_features.npy", "has_image.npy", "joint_vectors.npy")
NO_VECTORS_HINT = "run `shopgraph train` without --no-content"


class NoVectorsError(ValueError):
    """Something needs content vectors but the artifacts are a lexical (BM25 + graph) build.

    A ValueError so the CLI reports it as a user error; the API answers it with 503 (the
    server lacks the artifacts, the request itself is fine).
    """


def product_document(row: Mapping[str, Any]) -> str:
    """The English text a product is searched by: title plus its graph context."""
    parts = [str(row.get("title") or "")]
    category = row.get("category")
    if isinstance(category, str):
        parts.append(category.replace(" > ", " "))
    for key in ("brand", *ATTRIBUTE_ORDER):
        value = row.get(key)
        if isinstance(value, str) and value:
            parts.append(value.replace("|", " "))
    return ". ".join(p for p in parts if p)


def catalog_documents(catalog: pd.DataFrame) -> list[str]:
    """`product_document` for every row; dict records are ~10x faster than `iterrows`."""
    return [product_document(row) for row in catalog.to_dict("records")]


def is_holdout(product_id: str, share: float = HOLDOUT_SHARE) -> bool:
    """A stable 10% of products held out from joint-space training, by id hash."""
    digest = hashlib.sha256(product_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


@dataclass
class ContentArtifacts:
    """Everything search needs about the catalog, aligned row by row with `catalog`.

    The vector fields are None in a lexical build (see `build_lexical`).
    """

    catalog: pd.DataFrame
    documents: list[str]
    attributes: pd.DataFrame  # Attribute nodes (for query understanding)
    categories: pd.DataFrame  # Category nodes
    text_vectors: np.ndarray | None = None
    image_features: np.ndarray | None = None
    has_image: np.ndarray | None = None
    joint: JointSpace | None = None
    joint_vectors: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    brands: pd.DataFrame | None = None  # Brand nodes (names, aliases); None in older builds

    @property
    def ids(self) -> list[str]:
        return self.catalog["id"].astype(str).tolist()

    @property
    def mode(self) -> str:
        """`LEXICAL` when there are no vectors (BM25 + graph only), else `FULL`."""
        return LEXICAL if self.text_vectors is None else FULL

    @property
    def lexical(self) -> bool:
        return self.mode == LEXICAL

    def content_vectors(self) -> np.ndarray:
        """Fused per-product content vectors (text document + joint space), normalised."""
        if self.text_vectors is None or self.joint_vectors is None:
            raise NoVectorsError("these content artifacts are a lexical build (BM25 + graph) "
                                 f"with no content vectors; {NO_VECTORS_HINT}")
        fused = np.hstack([self.text_vectors, self.joint_vectors]).astype(np.float32)
        return fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)

    def subset(self, rows: np.ndarray) -> ContentArtifacts:
        """The same artifacts for some products only (e.g. a smaller catalog to time)."""
        rows = np.asarray(rows)

        def take(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[rows]

        return ContentArtifacts(
            catalog=self.catalog.iloc[rows].reset_index(drop=True),
            documents=[self.documents[i] for i in rows], text_vectors=take(self.text_vectors),
            image_features=take(self.image_features), has_image=take(self.has_image),
            joint=self.joint, joint_vectors=take(self.joint_vectors),
            attributes=self.attributes, categories=self.categories, meta=dict(self.meta),
            brands=self.brands,
        )

    def save(self, directory: Path) -> None:
        """Write atomically: a temporary folder renamed over the old one."""
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.catalog.to_parquet(tmp / "catalog.parquet", index=False)
        self.attributes.to_parquet(tmp / "attributes.parquet", index=False)
        self.categories.to_parquet(tmp / "categories.parquet", index=False)
        if self.brands is not None:
            self.brands.to_parquet(tmp / "brands.parquet", index=False)
        (tmp / "documents.json").write_text(json.dumps(self.documents, ensure_ascii=False))
        arrays = (self.text_vectors, self.image_features, self.has_image, self.joint_vectors)
        if not self.lexical:
            for name, array in zip(VECTOR_FILES, arrays, strict=True):
                np.save(tmp / name, array)
            if self.joint is not None:
                self.joint.save(tmp / "joint")
        (tmp / "meta.json").write_text(json.dumps({**self.meta, "mode": self.mode}, indent=1))
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)

    @classmethod
    def load(cls, directory: Path) -> ContentArtifacts:
        """A full or a lexical build, whichever `meta.json` says is there."""
        if not (directory / "meta.json").exists():
            raise FileNotFoundError(
                f"no content artifacts in {directory}; run `shopgraph train` first")
        meta = json.loads((directory / "meta.json").read_text())
        vectors: dict[str, Any] = {}
        if meta.get("mode", FULL) != LEXICAL:
            vectors = {name.removesuffix(".npy"): np.load(directory / name)
                       for name in VECTOR_FILES}
            vectors["joint"] = JointSpace.load(directory / "joint")
        return cls(
            catalog=pd.read_parquet(directory / "catalog.parquet"),
            documents=json.loads((directory / "documents.json").read_text()),
            attributes=pd.read_parquet(directory / "attributes.parquet"),
            categories=pd.read_parquet(directory / "categories.parquet"),
            brands=(pd.read_parquet(directory / "brands.parquet")
                    if (directory / "brands.parquet").exists() else None),
            meta=meta, **vectors,
        )


def content_dir(workspace: Path) -> Path:
    return Path(workspace).joinpath(*CONTENT_DIR)


def content_mode(workspace: Path) -> str | None:
    """`FULL` or `LEXICAL` for the workspace's content artifacts, None when there are none
    (read from meta.json alone, so callers can decide what to build without loading)."""
    meta = content_dir(workspace) / "meta.json"
    if not meta.is_file():
        return None
    try:
        return str(json.loads(meta.read_text()).get("mode", FULL))
    except (OSError, ValueError):
        return None


def _catalog(store: GraphStore) -> pd.DataFrame:
    catalog = product_catalog(export_graph(store))
    if catalog.empty:
        raise ValueError("the store holds no products; run `shopgraph load` first")
    return catalog


def build_lexical(store: GraphStore, workspace: Path) -> ContentArtifacts:
    """Catalog, documents and graph tables without any encoder: BM25 + graph search only.

    Seconds where `build_content` takes minutes to an hour, so a demo can search a large
    catalog on a CPU; the result is never used as GNN features (`content_vectors` refuses).
    """
    started = time.perf_counter()
    catalog = _catalog(store)
    artifacts = ContentArtifacts(
        catalog=catalog, documents=catalog_documents(catalog),
        attributes=store.node_table(ATTRIBUTE), categories=store.node_table(CATEGORY),
        brands=store.node_table(BRAND),
        meta={"mode": LEXICAL, "products": len(catalog)},
    )
    artifacts.meta["seconds"] = round(time.perf_counter() - started, 1)
    artifacts.save(content_dir(workspace))
    return artifacts


def build_content(
    store: GraphStore, workspace: Path, text_encoder: str = "e5",
    image_encoder: str = "efficientnet-lite0", joint_config: JointConfig | None = None,
    progress: bool = False,
) -> ContentArtifacts:
    """Encode the catalog, train the joint space and save everything in the workspace."""
    from encoders.cache import EmbeddingCache, encode_files_cached, encode_texts_cached
    from encoders.image import load_image_encoder
    from encoders.text import load_text_encoder

    started = time.perf_counter()
    workspace = Path(workspace)
    catalog = _catalog(store)
    documents = catalog_documents(catalog)
    cache_root = workspace / "cache" / "embeddings"

    text = load_text_encoder(text_encoder)
    # one encoding per product serves dense retrieval and the joint space's text tower
    text_vectors = encode_texts_cached(text, documents, EmbeddingCache(cache_root, text.name),
                                       kind="passage", progress=progress)

    images = load_image_encoder(image_encoder)
    paths = catalog.get("image", pd.Series([None] * len(catalog)))
    with_path = np.array([isinstance(p, str) and bool(p) for p in paths])
    image_features = np.zeros((len(catalog), images.dim), dtype=np.float32)
    has_image = np.zeros(len(catalog), dtype=bool)
    image_errors: dict[str, str] = {}
    if with_path.any():
        rows = np.flatnonzero(with_path)
        encoded = encode_files_cached(images, [Path(paths.iloc[i]) for i in rows],
                                      EmbeddingCache(cache_root, images.name), progress=progress)
        image_features[rows] = encoded.vectors
        has_image[rows] = encoded.ok
        image_errors = {str(catalog["id"].iloc[rows[i]]): msg
                        for i, msg in encoded.errors.items()}

    ids = catalog["id"].astype(str)
    holdout = ids.map(is_holdout).to_numpy(bool)
    train_rows = np.flatnonzero(has_image & ~holdout)
    test_rows = np.flatnonzero(has_image & holdout)
    joint = JointSpace(images.dim, text.dim, joint_config)
    report: dict[str, Any] = {"pairs_train": len(train_rows), "pairs_heldout": len(test_rows)}
    if len(test_rows) >= 10:
        baseline = JointSpace(images.dim, text.dim, joint_config)  # untrained = random projection
        report["random_projection"] = baseline.evaluate(image_features[test_rows],
                                                        text_vectors[test_rows])
    if len(train_rows) >= 2:
        t0 = time.perf_counter()
        losses = joint.fit(image_features[train_rows], text_vectors[train_rows], progress)
        report["train_seconds"] = round(time.perf_counter() - t0, 1)
        report["final_loss"] = round(losses[-1], 4)
    if len(test_rows) >= 10:
        report["heldout"] = joint.evaluate(image_features[test_rows], text_vectors[test_rows])

    joint_vectors = joint.embed_texts(text_vectors)
    if has_image.any():
        joint_vectors[has_image] = joint.embed_images(image_features[has_image])

    artifacts = ContentArtifacts(
        catalog=catalog, documents=documents, text_vectors=text_vectors,
        image_features=image_features, has_image=has_image, joint=joint,
        joint_vectors=joint_vectors,
        attributes=store.node_table(ATTRIBUTE), categories=store.node_table(CATEGORY),
        brands=store.node_table(BRAND),
        meta={
            "mode": FULL, "text_encoder": text.name, "image_encoder": images.name,
            "text_spec": text_encoder, "image_spec": image_encoder,
            "products": len(catalog), "with_image": int(has_image.sum()),
            "image_errors": len(image_errors), "image_error_examples":
                dict(list(image_errors.items())[:5]),
            "joint": report, "seconds": round(time.perf_counter() - started, 1),
        },
    )
    artifacts.save(content_dir(workspace))
    return artifacts
