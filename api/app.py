"""The HTTP API: product search (text, image, both), product details and graph neighbourhoods.

`create_app()` builds a FastAPI app over one workspace (search artifacts) and one graph store
(embedded or Neo4j). Settings come from arguments, else from the environment:

| argument           | environment                                  | default             |
|--------------------|----------------------------------------------|---------------------|
| `workspace`        | `SHOPGRAPH_WORKSPACE`                        | `./workspace`       |
| `store` (instance) | `SHOPGRAPH_STORE` (+ `NEO4J_URI/USER/PASSWORD`) | embedded store   |
| `api_key`          | `SHOPGRAPH_API_KEY`                          | none (writes open)  |
| `max_upload_bytes` | `SHOPGRAPH_MAX_UPLOAD_BYTES`                 | 10 MiB              |

The app starts even when the artifacts or the store are missing (so `/health` answers and
`/ready` says what is wrong); `POST /admin/reload` loads new artifacts without a restart. Search
and store reads are blocking, so every such endpoint is a plain `def` that FastAPI runs in its
threadpool, keeping the event loop free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import Response

from api.errors import install_error_handlers
from api.limits import BodyLimitMiddleware
from api.metrics import ApiMetrics, MetricsMiddleware
from api.models import (
    ErrorBody,
    HealthOut,
    NeighbourhoodOut,
    NeighbourOut,
    NodeOut,
    NodeRefOut,
    ProductOut,
    ReadyOut,
    RelationshipOut,
    ReloadOut,
    SearchOut,
)
from api.security import ApiKey, require_api_key
from kg.schema import (
    HAS_ATTRIBUTE,
    IN_CATEGORY,
    MADE_BY,
    NODE_LABELS,
    PRODUCT,
    REL_TYPES,
)
from kg.store import GraphStore, Neighbour
from kg.workspace import StoreKind, default_store_kind, default_workspace, open_store

if TYPE_CHECKING:
    from recommender.search import ProductSearch, SearchHit

__all__ = ["Personaliser", "Services", "create_app", "require_api_key"]

log = logging.getLogger("shopgraph.api")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers beside the image itself
MAX_IMAGE_PIXELS = 50_000_000  # refuse decompression bombs before decoding
MAX_K = 100

Personaliser = Callable[[str, "list[SearchHit]"], "list[SearchHit]"]
"""`(user_id, hits) -> hits` re-ranked with the user's history; KeyError for an unknown user."""

NodeLabel = StrEnum("NodeLabel", {label: label for label in NODE_LABELS})  # type: ignore[misc]
"""Path parameter type, so the schema and 422 errors list the valid labels."""

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (404, 413, 415, 422, 503)
}


@dataclass(frozen=True)
class LoadedSearch:
    """Search artifacts in service; replaced as a whole, so a request sees one version."""

    search: ProductSearch
    version: str
    products: int


def artifacts_version(search: ProductSearch) -> str:
    """A short content hash of the artifacts' metadata (it changes with every training)."""
    meta = json.dumps(search.artifacts.meta, sort_keys=True, default=str)
    return hashlib.sha256(meta.encode("utf-8")).hexdigest()[:12]


def build_search(workspace: Path, previous: ProductSearch | None = None,
                 warm: bool = True) -> ProductSearch:
    """Load the workspace's artifacts into a ready ProductSearch.

    Encoders are taken over from `previous` when the artifacts were built with the same ones
    (no model reload on a refresh), and `warm` runs one query so the first real request does
    not pay for model start-up.
    """
    from recommender.content import ContentArtifacts, content_dir
    from recommender.search import ProductSearch

    artifacts = ContentArtifacts.load(content_dir(workspace))
    encoders: dict[str, Any] = {}
    if previous is not None:
        old = previous.artifacts.meta
        if old.get("text_spec") == artifacts.meta.get("text_spec"):
            encoders["text_encoder"] = previous.text_encoder
        if old.get("image_spec") == artifacts.meta.get("image_spec"):
            encoders["image_encoder"] = previous.image_encoder
    search = ProductSearch(artifacts, **encoders)
    if warm and len(search.ids):
        search.search("shirt", k=1)
    return search


def _store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the store cannot be reached right now" (answered with 503)."""
    import neo4j.exceptions

    return (ConnectionError, neo4j.exceptions.ServiceUnavailable,
            neo4j.exceptions.SessionExpired)


class Services:
    """What the endpoints use: the current search and the graph store.

    The search reference is swapped in one assignment on reload, so in-flight requests finish
    on the version they started with. The store is opened lazily and re-tried on failure, so
    the API can start before Neo4j is up.
    """

    def __init__(self, workspace: Path, store: GraphStore | None, store_kind: StoreKind,
                 warm: bool = True) -> None:
        self.workspace = workspace
        self.store_kind = store_kind
        self.owns_store = store is None
        self.warm = warm
        self.current: LoadedSearch | None = None
        self.search_error: str | None = "not loaded yet"
        self._store = store
        self._store_error: str | None = None
        self._store_lock = threading.Lock()
        self._reload_lock = threading.Lock()

    # ---- search ---------------------------------------------------------------------------
    def use_search(self, search: ProductSearch) -> LoadedSearch:
        loaded = LoadedSearch(search, artifacts_version(search), len(search.ids))
        self.current = loaded  # the one assignment that swaps versions
        self.search_error = None
        return loaded

    def reload(self) -> tuple[LoadedSearch, LoadedSearch | None]:
        """Build new artifacts fully, then swap; the old ones serve until the swap."""
        with self._reload_lock:  # one build at a time; concurrent reloads queue up
            previous = self.current
            try:
                search = build_search(self.workspace, previous.search if previous else None,
                                      warm=self.warm)
            except Exception as exc:
                if previous is None:
                    self.search_error = f"{type(exc).__name__}: {exc}"
                raise
            if self.owns_store and self.store_kind == "embedded":
                self._reopen_embedded_store()
            return self.use_search(search), previous

    def require_search(self) -> LoadedSearch:
        loaded = self.current
        if loaded is None:
            raise HTTPException(503, detail=f"search is not ready: {self.search_error} "
                                            "(after `shopgraph train`, POST /admin/reload "
                                            "loads the artifacts)")
        return loaded

    # ---- store ----------------------------------------------------------------------------
    def store(self) -> GraphStore:
        """The graph store, opened on first use; 503 when it cannot be reached."""
        store = self._store
        if store is not None:
            return store
        with self._store_lock:
            if self._store is None:
                try:
                    self._store = open_store(self.store_kind, self.workspace)
                    self._store_error = None
                except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
                    self._store_error = str(exc)
                    log.warning("graph store unavailable: %s", exc)
                    raise HTTPException(503, detail=f"graph store unavailable: {exc}") from exc
            return self._store

    def _reopen_embedded_store(self) -> None:
        """Pick up a graph re-imported on disk; the old object stays valid for readers."""
        with self._store_lock:
            self._store = open_store("embedded", self.workspace)

    def close(self) -> None:
        if self.owns_store and self._store is not None:
            self._store.close()

    @contextmanager
    def reading(self) -> Iterator[GraphStore]:
        """The store, with connection failures during a read turned into 503s."""
        store = self.store()
        try:
            yield store
        except _store_errors() as exc:
            raise HTTPException(503, detail=f"graph store unavailable: {exc}") from exc


def _max_upload_from_env() -> int:
    raw = os.environ.get("SHOPGRAPH_MAX_UPLOAD_BYTES")
    if not raw:
        return DEFAULT_MAX_UPLOAD_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"SHOPGRAPH_MAX_UPLOAD_BYTES must be a whole number of bytes, "
                         f"not {raw!r}") from None
    if value < 1:
        raise ValueError(f"SHOPGRAPH_MAX_UPLOAD_BYTES must be positive, not {value}")
    return value


def create_app(
    workspace: Path | None = None,
    store: GraphStore | None = None,
    api_key: str | None = None,
    *,
    store_kind: StoreKind | None = None,
    search: ProductSearch | None = None,
    max_upload_bytes: int | None = None,
    personaliser: Personaliser | None = None,
    load_search: bool = True,
    warm: bool = True,
) -> FastAPI:
    """The shopgraph HTTP app.

    `store` and `search` may be passed in ready-made (tests, embedding in another service);
    otherwise they are opened from `workspace` and the environment. A store passed in is not
    closed by the app. `load_search=False` starts without artifacts (then POST /admin/reload).
    """
    workspace = Path(workspace) if workspace is not None else default_workspace()
    services = Services(workspace, store, store_kind or default_store_kind(), warm=warm)
    if search is not None:
        services.use_search(search)
    elif load_search:
        try:
            services.reload()
        except Exception as exc:  # noqa: BLE001 - start anyway; /ready reports the reason
            log.warning("search artifacts not loaded from %s: %s", workspace, exc)
    upload_limit = max_upload_bytes or _max_upload_from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    app = FastAPI(
        title="shopgraph",
        version=_version(),
        summary="Knowledge-graph e-commerce search and recommendation",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.api_key = api_key if api_key is not None else (
        os.environ.get("SHOPGRAPH_API_KEY") or None)
    app.state.max_upload_bytes = upload_limit
    app.state.personaliser = personaliser
    metrics = ApiMetrics()
    app.state.metrics = metrics
    install_error_handlers(app)
    # added last = outermost: metrics see every response, including 413s from the limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=upload_limit + MULTIPART_OVERHEAD)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _add_search_routes(app, services)
    _add_graph_routes(app, services)
    _add_operational_routes(app, services, metrics)
    return app


# ---- search ---------------------------------------------------------------------------------
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="How many results (1-100)")]
UserParam = Annotated[str | None, Query(
    description="Personalise with this user's history (when a personaliser is configured)")]


def _run_search(request: Request, services: Services, query: str | None, image: Any, k: int,
                category: str | None, brand: str | None, user: str | None) -> SearchOut:
    loaded = services.require_search()  # read once: a reload mid-request does not affect us
    try:
        result = loaded.search.search(query, image=image, k=k, category=category, brand=brand)
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    hits = result.hits
    personaliser: Personaliser | None = getattr(request.app.state, "personaliser", None)
    personalised = False
    if user is not None and personaliser is not None:
        try:
            hits = personaliser(user, hits)
        except KeyError as exc:
            raise HTTPException(404, detail=f"unknown user {user!r}") from exc
        personalised = True
    body = result.to_dict()
    body["hits"] = [h.to_dict() for h in hits]
    return SearchOut(**body, personalised=personalised)


def _add_search_routes(app: FastAPI, services: Services) -> None:
    @app.get("/search", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def search_text(
        request: Request,
        q: Annotated[str, Query(min_length=1, max_length=500,
                                description="Words, Chinese or English")],
        k: KParam = 10,
        category: Annotated[str | None, Query(description='e.g. "Footwear"')] = None,
        brand: Annotated[str | None, Query(description="Brand name")] = None,
        user: UserParam = None,
    ) -> SearchOut:
        """Text search: the query is mapped onto graph concepts, then BM25, dense text,
        joint-space and graph-match scores are fused."""
        return _run_search(request, services, q, None, k, category, brand, user)

    @app.post("/search/image", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def search_image(
        request: Request,
        image: Annotated[UploadFile, File(description="A photo (JPEG, PNG, WebP, ...)")],
        q: Annotated[str | None, Form(max_length=500, description="Optional words")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K, description="How many results (1-100)")] = 10,
        category: Annotated[str | None, Form(description='e.g. "Footwear"')] = None,
        brand: Annotated[str | None, Form(description="Brand name")] = None,
        user: UserParam = None,
    ) -> SearchOut:
        """Image search, optionally with words: finds visually similar and same-type products."""
        picture = _read_image(image, request.app.state.max_upload_bytes)
        return _run_search(request, services, (q or "").strip() or None, picture, k,
                           category, brand, user)


def _read_image(upload: UploadFile, limit: int) -> Any:
    """The upload as an RGB PIL image; 413 when too big, 415 when not an image."""
    from PIL import Image, UnidentifiedImageError

    size = upload.size
    if size is None:
        upload.file.seek(0, os.SEEK_END)
        size = upload.file.tell()
    if size > limit:
        raise HTTPException(413, detail=f"image too large: {size:,} bytes; the limit is "
                                        f"{limit:,} bytes")
    upload.file.seek(0)
    name = upload.filename or "upload"
    try:
        with Image.open(upload.file) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise HTTPException(413, detail=f"image too large: {img.width}x{img.height} "
                                                f"pixels; the limit is {MAX_IMAGE_PIXELS:,}")
            return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, detail=f"image too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        declared = upload.content_type or "no content type"
        raise HTTPException(415, detail=f"{name!r} ({declared}) is not an image that can be "
                                        "read; send a JPEG, PNG, WebP or GIF") from exc


# ---- graph ----------------------------------------------------------------------------------
def _node(label: str, node_id: str, props: dict[str, Any]) -> NodeOut:
    return NodeOut(label=label, id=node_id, properties=props)


def _relationship(n: Neighbour) -> RelationshipOut:
    """The hop that reached `n`, oriented as stored when the schema fixes the direction."""
    here = NodeRefOut(label=n.label, id=n.id)
    there = NodeRefOut(label=n.from_node[0], id=n.from_node[1])
    rel = REL_TYPES[n.via]
    if rel.source != rel.target:
        start, end = (there, here) if there.label == rel.source else (here, there)
        return RelationshipOut(type=n.via, start=start, end=end, oriented=True)
    return RelationshipOut(type=n.via, start=there, end=here, oriented=False)


def _add_graph_routes(app: FastAPI, services: Services) -> None:
    @app.get("/products/{product_id}", response_model=ProductOut, responses=ERRORS,
             tags=["graph"])
    def product(product_id: str) -> ProductOut:
        """A product's properties with its brand, categories and attributes from the graph."""
        with services.reading() as store:
            props = store.get_node(PRODUCT, product_id)
            if props is None:
                raise HTTPException(404, detail=f"no product with id {product_id!r}")
            around = store.neighbours(PRODUCT, product_id, depth=1,
                                      rel_types=(MADE_BY.name, IN_CATEGORY.name,
                                                 HAS_ATTRIBUTE.name))
        by_type: dict[str, list[NodeOut]] = {}
        for n in around:
            by_type.setdefault(n.via, []).append(_node(n.label, n.id, n.props))
        brands = by_type.get(MADE_BY.name, [])
        return ProductOut(id=product_id, properties=props,
                          brand=brands[0] if brands else None,
                          categories=by_type.get(IN_CATEGORY.name, []),
                          attributes=by_type.get(HAS_ATTRIBUTE.name, []))

    @app.get("/graph/neighbourhood/{label}/{node_id}", response_model=NeighbourhoodOut,
             responses=ERRORS, tags=["graph"])
    def neighbourhood(
        label: Annotated[NodeLabel, PathParam(description="Node label")],  # type: ignore[valid-type]
        node_id: Annotated[str, PathParam(description="Node id")],
        depth: Annotated[int, Query(ge=1, le=3, description="Hops (1-3)")] = 1,
        limit: Annotated[int, Query(ge=1, le=1000, description="Most nodes returned")] = 100,
    ) -> NeighbourhoodOut:
        """Nodes within `depth` hops (either direction), nearest first, with the hops."""
        name = str(label.value)
        with services.reading() as store:
            centre = store.get_node(name, node_id)
            if centre is None:
                raise HTTPException(404, detail=f"no {name} with id {node_id!r}")
            try:
                found = store.neighbours(name, node_id, depth=depth, limit=limit + 1)
            except KeyError as exc:  # deleted between the two reads
                raise HTTPException(404, detail=f"no {name} with id {node_id!r}") from exc
        kept = found[:limit]
        return NeighbourhoodOut(
            centre=_node(name, node_id, centre), depth=depth,
            nodes=[NeighbourOut(label=n.label, id=n.id, properties=n.props,
                                distance=n.distance) for n in kept],
            relationships=[_relationship(n) for n in kept],
            truncated=len(found) > limit,
        )


# ---- operations -----------------------------------------------------------------------------
def _add_operational_routes(app: FastAPI, services: Services, metrics: ApiMetrics) -> None:
    @app.get("/health", response_model=HealthOut, tags=["operations"])
    async def health() -> HealthOut:
        """Liveness: the process answers (nothing else is checked)."""
        return HealthOut()

    @app.get("/ready", response_model=ReadyOut, responses={503: {"model": ErrorBody}},
             tags=["operations"])
    def ready() -> ReadyOut:
        """Readiness: search artifacts loaded and the graph store answering a query."""
        loaded = services.require_search()
        with services.reading() as store:
            try:
                store.get_node(PRODUCT, "__readiness_probe__")
            except HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                raise HTTPException(503, detail=f"graph store unavailable: {exc}") from exc
        return ReadyOut(products=loaded.products, artifacts=loaded.version,
                        store=getattr(store, "name", type(store).__name__))

    @app.get("/metrics", response_class=Response, tags=["operations"],
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus text exposition format"}})
    def prometheus_metrics() -> Response:
        """Request counts and latency histograms per route and status (Prometheus)."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/admin/reload", response_model=ReloadOut, dependencies=[ApiKey],
              responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
              tags=["operations"])
    def reload() -> ReloadOut:
        """Load the workspace's current artifacts and swap them in without dropping requests."""
        started = time.perf_counter()
        try:
            loaded, previous = services.reload()
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            metrics.reloads.labels("failed").inc()
            serving = services.current.version if services.current else "nothing"
            raise HTTPException(503, detail=f"reload failed, still serving {serving}: "
                                            f"{type(exc).__name__}: {exc}") from exc
        metrics.reloads.labels("ok").inc()
        return ReloadOut(products=loaded.products, artifacts=loaded.version,
                         previous_artifacts=previous.version if previous else None,
                         seconds=round(time.perf_counter() - started, 3))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shopgraph")
    except PackageNotFoundError:
        return "0.0.0"
