"""The HTTP API: search (text, image, both), products, graph neighbourhoods, recommendations,
related products and live shopper events.

`create_app()` builds a FastAPI app over one workspace (search artifacts and the trained
recommender) and one graph store (embedded or Neo4j). Settings come from arguments, else from
the environment:

| argument           | environment                                  | default             |
|--------------------|----------------------------------------------|---------------------|
| `workspace`        | `SHOPGRAPH_WORKSPACE`                        | `./workspace`       |
| `store` (instance) | `SHOPGRAPH_STORE` (+ `NEO4J_URI/USER/PASSWORD`) | embedded store   |
| `api_key`          | `SHOPGRAPH_API_KEY`                          | none (writes open)  |
| `max_upload_bytes` | `SHOPGRAPH_MAX_UPLOAD_BYTES`                 | 10 MiB              |

The app starts even when the artifacts, the recommender or the store are missing (so `/health`
answers and `/ready` says what is loaded and what is not); `POST /admin/reload` loads new search
artifacts and the recommender's `CURRENT` version without a restart.

`POST /events` writes to the graph store first (the system of record), then updates the live
recommender, so an event the store refused is never served; events of one user are serialised
end to end, so concurrent posts all land.

Search, recommendation and store calls are blocking, so every such endpoint is a plain `def`
that FastAPI runs in its threadpool, keeping the event loop free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Body, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from api.errors import install_error_handlers
from api.limits import BodyLimitMiddleware
from api.metrics import ApiMetrics, MetricsMiddleware
from api.models import (
    ErrorBody,
    EventIn,
    EventOut,
    EventsOut,
    HealthOut,
    NeighbourhoodOut,
    NeighbourOut,
    NodeOut,
    NodeRefOut,
    ProductOut,
    ReadyOut,
    RecommendationOut,
    RecommendationsOut,
    RelatedOut,
    RelationshipOut,
    ReloadOut,
    SearchOut,
    UsersOut,
)
from api.security import ApiKey, require_api_key
from kg.schema import (
    HAS_ATTRIBUTE,
    IN_CATEGORY,
    MADE_BY,
    NODE_LABELS,
    PRODUCT,
    REL_TYPES,
    USER,
)
from kg.store import GraphStore, InteractionEvent, Neighbour
from kg.workspace import StoreKind, default_store_kind, default_workspace, open_store

if TYPE_CHECKING:
    from recommender.search import ProductSearch, SearchHit
    from recommender.service import Recommendation, RecommendationService

__all__ = ["Personaliser", "Services", "app_from_env", "create_app", "require_api_key"]

log = logging.getLogger("shopgraph.api")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers beside the image itself
MAX_IMAGE_PIXELS = 50_000_000  # refuse decompression bombs before decoding
MAX_K = 100
EVENT_LOCK_STRIPES = 64  # events of one user share a lock; bounded however many users come
EVENT_JOURNAL = 100_000  # live events kept to replay onto a reloaded recommender
EVENT_WRITERS = 16  # threads for POST /events, apart from the shared pool that reads run in
EVENT_POLL_S = 0.2  # how often a server picks up events other processes wrote to the store
EVENT_POLL_MAX_BACKOFF_S = 10.0  # longest pause between polls while the store is down
MAX_EVENT_BATCH = 5_000  # events in one POST /events/batch
PERSONAL_WEIGHT = 0.3  # most a user's taste moves a search hit, as a share of the score range
RECOMMENDER_HEADER = "X-Recommender-Version"

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
        search.understanding.prepare()  # graph names embedded, spelling index built
    return search


@dataclass(frozen=True)
class LoadedRecommender:
    """The recommender in service; replaced as a whole on reload, like `LoadedSearch`."""

    service: RecommendationService
    version: str
    users: int
    products: int


@dataclass(frozen=True)
class LiveEvent:
    """An event recorded since start-up, kept to replay onto a freshly loaded recommender."""

    user_id: str
    product_id: str
    kind: str
    ts: int


@dataclass
class ReloadReport:
    """What one reload did: each part is loaded, absent (never trained) or failed."""

    search: LoadedSearch | None = None
    previous_search: LoadedSearch | None = None
    recommender: LoadedRecommender | None = None
    previous_recommender: LoadedRecommender | None = None
    failed: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)


def build_recommender(workspace: Path) -> RecommendationService:
    """The workspace's `CURRENT` recommender version (FileNotFoundError when never trained)."""
    from recommender.service import RecommendationService

    return RecommendationService.load(workspace)


def _store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the store cannot be reached right now" (answered with 503)."""
    import neo4j.exceptions

    return (ConnectionError, neo4j.exceptions.ServiceUnavailable,
            neo4j.exceptions.SessionExpired)


def _store_write_errors() -> tuple[type[BaseException], ...]:
    """On a write, an OSError from the driver's socket also means "unreachable" (503)."""
    return (*_store_errors(), OSError)


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Services:
    """What the endpoints use: the current search, the current recommender and the store.

    The search and recommender references are each swapped in one assignment on reload, so
    in-flight requests finish on the version they started with. The store is opened lazily
    and re-tried on failure, so the API can start before Neo4j is up.
    """

    def __init__(self, workspace: Path, store: GraphStore | None, store_kind: StoreKind,
                 warm: bool = True) -> None:
        self.workspace = workspace
        self.store_kind = store_kind
        self.owns_store = store is None
        self.warm = warm
        self.current: LoadedSearch | None = None
        self.search_error: str | None = "not loaded yet"
        self.recommender: LoadedRecommender | None = None
        self.recommender_error: str | None = "not loaded yet"
        self._store = store
        self._store_error: str | None = None
        self._store_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._event_locks = tuple(threading.Lock() for _ in range(EVENT_LOCK_STRIPES))
        self._journal: deque[LiveEvent] = deque(maxlen=EVENT_JOURNAL)
        self._own_seqs: set[int] = set()  # log entries this process wrote (not to re-apply)
        self.event_cursor = 0  # the newest log entry applied here
        self._follower: tuple[threading.Thread, threading.Event] | None = None

    # ---- search ---------------------------------------------------------------------------
    def use_search(self, search: ProductSearch) -> LoadedSearch:
        loaded = LoadedSearch(search, artifacts_version(search), len(search.ids))
        self.current = loaded  # the one assignment that swaps versions
        self.search_error = None
        return loaded

    def require_search(self) -> LoadedSearch:
        loaded = self.current
        if loaded is None:
            raise HTTPException(503, detail=f"search is not ready: {self.search_error} "
                                            "(after `shopgraph train`, POST /admin/reload "
                                            "loads the artifacts)")
        return loaded

    # ---- recommender ----------------------------------------------------------------------
    def use_recommender(self, service: RecommendationService) -> LoadedRecommender:
        """Swap `service` in, after replaying the live events it has not seen.

        The event locks are held from the replay to the swap, so an event posted meanwhile
        lands in the new service (it waits) rather than only in the old one.
        """
        with self._all_event_locks():
            self._replay(service)
            loaded = LoadedRecommender(service, service.version, len(service.user_ids),
                                       len(service.product_ids))
            self.recommender = loaded  # the one assignment that swaps versions
            self.recommender_error = None
        return loaded

    def _replay(self, service: RecommendationService) -> None:
        """Events recorded live since start-up that `service`'s training did not include.

        Training snapshots the store, where every event was written first: an event is
        already in the new version when its (user, product) pair is there with a time at or
        after the event's, and is replayed otherwise.
        """
        if not self._journal:
            return
        from recommender.service import UnknownIdError

        events = list(self._journal)
        rows = {service.user_row[e.user_id] for e in events if e.user_id in service.user_row}
        history = service.history[service.history["user"].isin(rows)]
        latest = history.groupby(["user", "item"])["ts"].max()
        seen = {(service.user_ids[u], service.product_ids[i]): int(t)
                for (u, i), t in latest.items()}
        for event in events:
            if seen.get((event.user_id, event.product_id), -1) >= event.ts:
                continue
            try:
                service.record_event(event.user_id, event.product_id, event.kind, event.ts)
            except UnknownIdError:  # a product the new version no longer has
                continue

    def require_recommender(self) -> LoadedRecommender:
        loaded = self.recommender
        if loaded is None:
            raise HTTPException(503, detail=f"recommendations are not ready: "
                                            f"{self.recommender_error} (after `shopgraph "
                                            "train`, POST /admin/reload loads the recommender)")
        return loaded

    def personaliser(self) -> Personaliser | None:
        """Search re-ranking by the current recommender's view of the user, if one is loaded."""
        loaded = self.recommender
        if loaded is None:
            return None
        service = loaded.service
        return lambda user_id, hits: personalise(service, user_id, hits)

    # ---- reload ---------------------------------------------------------------------------
    def reload(self) -> ReloadReport:
        """Build the search and the recommender fully, then swap each in; old ones serve
        until their swap. A part never trained is `absent`; any other failure is `failed`
        and its previous version keeps serving."""
        with self._reload_lock:  # one build at a time; concurrent reloads queue up
            report = ReloadReport(previous_search=self.current,
                                  previous_recommender=self.recommender)
            search = recommender = None
            try:
                search = build_search(self.workspace, self.current.search if self.current
                                      else None, warm=self.warm)
            except Exception as exc:  # noqa: BLE001 - reported, the old version serves
                self._record_failure(report, "search", exc, self.current is None)
            try:
                recommender = build_recommender(self.workspace)
            except Exception as exc:  # noqa: BLE001 - reported, the old version serves
                self._record_failure(report, "recommender", exc, self.recommender is None)
            if search is not None:
                report.search = self.use_search(search)
            if recommender is not None:
                report.recommender = self.use_recommender(recommender)
            return report

    def _record_failure(self, report: ReloadReport, part: str, exc: Exception,
                        nothing_served: bool) -> None:
        message = _describe_error(exc)
        if isinstance(exc, FileNotFoundError) and nothing_served:
            report.absent[part] = message
        else:
            report.failed[part] = message
        if nothing_served:
            setattr(self, f"{part}_error", message)

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

    def close(self) -> None:
        if self._follower is not None:
            thread, stop = self._follower
            stop.set()
            thread.join()
            self._follower = None
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

    # ---- events ---------------------------------------------------------------------------
    def event_lock(self, user_id: str) -> threading.Lock:
        """The lock serialising one user's events (store write + live update) end to end."""
        return self._event_locks[zlib.crc32(user_id.encode("utf-8")) % EVENT_LOCK_STRIPES]

    @contextmanager
    def _all_event_locks(self) -> Iterator[None]:
        with ExitStack() as stack:  # always in the same order: no deadlock between two callers
            for lock in self._event_locks:
                stack.enter_context(lock)
            yield

    @contextmanager
    def _event_locks_for(self, user_ids: Iterable[str]) -> Iterator[None]:
        """The locks of every user given, taken in one order (no deadlock between batches)."""
        stripes = sorted({zlib.crc32(u.encode("utf-8")) % EVENT_LOCK_STRIPES for u in user_ids})
        with ExitStack() as stack:
            for stripe in stripes:
                stack.enter_context(self._event_locks[stripe])
            yield

    def record_events(self, events: list[EventIn]) -> list[EventOut]:
        """Write events to the store (durable when this returns), then into the live
        recommender; 503 when the store cannot be reached, and then nothing is recorded.

        Concurrent calls share one store transaction (group commit). Each INTERACTED edge is
        MERGEd per (user, product, kind) with `count` and `weight` incremented and the latest
        `ts`, as the importers aggregate repeats. An event whose `event_id` the store has
        already logged is a `duplicate` and changes nothing; one for an unknown product is
        `unknown_product` and is not recorded.
        """
        now = int(time.time())
        wanted = [InteractionEvent(e.user_id, e.product_id, e.kind,
                                   int(e.ts if e.ts is not None else now), 1.0, e.event_id)
                  for e in events]
        with self._event_locks_for(e.user_id for e in wanted):
            store = self.store()
            try:
                results = store.record_events(wanted)
            except _store_write_errors() as exc:
                raise HTTPException(503, detail=f"graph store unavailable, event not "
                                                f"recorded: {exc}") from exc
            out = []
            for result in results:
                version = history = None
                if result.status == "recorded":
                    if result.seq is not None and self._follower is not None:
                        self._own_seqs.add(result.seq)  # the follower skips it
                    version, history = self._record_live(result.event)
                out.append(EventOut(
                    user_id=result.event.user_id, product_id=result.event.product_id,
                    kind=result.event.kind, ts=result.event.ts, status=result.status,
                    event_id=result.event.event_id, seq=result.seq, count=result.count,
                    new_user=result.new_user, recommender=version, history=history))
        return out

    def record_event(self, event: EventIn) -> EventOut:
        """One event (see `record_events`); 404 for an unknown product."""
        result = self.record_events([event])[0]
        if result.status == "unknown_product":
            raise HTTPException(404, detail=f"no product with id {event.product_id!r}")
        return result

    def follow_events(self) -> int:
        """Apply events other processes wrote to the store since the last call (workers
        sharing one store see each other's events); returns how many were applied."""
        store = self.store()
        applied = 0
        while True:
            logged = store.events_since(self.event_cursor)
            for entry in logged:
                self.event_cursor = max(self.event_cursor, entry.seq)
                # the writer holds this lock from its commit until it noted the seq as its own
                with self.event_lock(entry.event.user_id):
                    if entry.seq in self._own_seqs:
                        self._own_seqs.discard(entry.seq)
                        continue
                    self._record_live(entry.event)
                applied += 1
            if len(logged) < 10_000:
                return applied

    def start_following(self, interval_s: float = EVENT_POLL_S) -> None:
        """Poll the store's event log every `interval_s` on a daemon thread."""
        if self._follower is not None:
            return
        try:
            self.event_cursor = self.store().latest_event_seq()
        except Exception as exc:  # noqa: BLE001 - the thread retries until the store answers
            log.warning("event log not readable yet: %s", exc)
        stop = threading.Event()

        def run() -> None:
            pause = interval_s
            while not stop.wait(pause):
                try:
                    self.follow_events()
                    pause = interval_s
                except Exception as exc:  # noqa: BLE001 - logged; the next poll retries
                    # back off while the store is down: a restarting Neo4j counts rapid
                    # reconnects against its authentication rate limit
                    pause = min(pause * 2, EVENT_POLL_MAX_BACKOFF_S)
                    log.warning("following the store's events failed (next try in %.1f s): "
                                "%s", pause, exc)

        thread = threading.Thread(target=run, name="event-follower", daemon=True)
        self._follower = (thread, stop)
        thread.start()

    def adopt_user(self, loaded: LoadedRecommender, user_id: str) -> bool:
        """Let `loaded` serve a user the graph has but its training did not (their stored
        history; cold start when short). False when the graph has no such user, or when the
        store cannot be asked (the caller answers 404 either way: reads never need it)."""
        try:
            store = self.store()
            if store.get_node(USER, user_id) is None:
                return False
            events = store.interactions(user_id)
        except (HTTPException, *_store_errors()) as exc:
            log.warning("could not look up user %r in the graph store: %s", user_id, exc)
            return False
        loaded.service.adopt_user(user_id, events)
        return True

    def _record_live(self, event: InteractionEvent) -> tuple[str | None, int | None]:
        """Journal the event (for a reload's replay) and apply it to the live recommender."""
        from recommender.service import UnknownIdError

        self._journal.append(LiveEvent(event.user_id, event.product_id, event.kind, event.ts))
        loaded = self.recommender
        if loaded is None:
            return None, None
        try:
            result = loaded.service.record_event(event.user_id, event.product_id, event.kind,
                                                 event.ts)
        except UnknownIdError:  # a product added to the graph after this version's training
            return None, None
        return loaded.version, int(result["history"])


def personalise(service: RecommendationService, user_id: str, hits: list[SearchHit]
                ) -> list[SearchHit]:
    """Search hits re-ranked by the user's hybrid blend (KeyError for an unknown user).

    The hits are ranked among themselves by the user's blend score; the r-th of n (0 = the
    user's favourite) gains `PERSONAL_WEIGHT * spread * (n - r) / n`, where `spread` is the
    range of the hits' search scores, so taste re-orders hits of similar relevance but
    cannot lift a poor match over a strong one. Hits the recommender does not know, and
    users with too short a history for the blend (the service's cold start), gain nothing.
    The bonus shows as `sources["personal"]`.
    """
    blend = service.user_scores(user_id)  # UnknownIdError (a KeyError) for an unknown user
    if blend is None or len(hits) < 2:
        return hits
    known = [(i, blend[service.product_row[h.id]]) for i, h in enumerate(hits)
             if h.id in service.product_row]
    order = sorted(known, key=lambda pair: -pair[1])
    scores = [h.score for h in hits]
    spread = (max(scores) - min(scores)) or abs(max(scores)) or 1.0
    n = len(hits)
    bonus = {i: PERSONAL_WEIGHT * spread * (n - rank) / n for rank, (i, _) in enumerate(order)}
    moved = [replace(h, score=h.score + bonus.get(i, 0.0),
                     sources={**h.sources, "personal": bonus.get(i, 0.0)})
             for i, h in enumerate(hits)]
    return sorted(moved, key=lambda h: -h.score)


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


def _load_at_startup(services: Services, search: bool, recommender: bool) -> None:
    """Load what the workspace has; start anyway, /ready reports what is missing and why."""
    if search and recommender:
        report = services.reload()
        for part, reason in {**report.absent, **report.failed}.items():
            log.warning("%s not loaded from %s: %s", part, services.workspace, reason)
        return
    if search:
        try:
            services.use_search(build_search(services.workspace, warm=services.warm))
        except Exception as exc:  # noqa: BLE001 - start anyway; /ready reports the reason
            services.search_error = _describe_error(exc)
            log.warning("search artifacts not loaded from %s: %s", services.workspace, exc)
    if recommender:
        try:
            services.use_recommender(build_recommender(services.workspace))
        except Exception as exc:  # noqa: BLE001 - start anyway; /ready reports the reason
            services.recommender_error = _describe_error(exc)
            log.warning("recommender not loaded from %s: %s", services.workspace, exc)


def app_from_env() -> FastAPI:
    """The app from `SHOPGRAPH_*` settings alone: what each `shopgraph serve --workers N`
    process builds (uvicorn imports it by name in every worker)."""
    return create_app()


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
    recommender: RecommendationService | None = None,
    load_recommender: bool = True,
    follow_events: bool | None = None,
) -> FastAPI:
    """The shopgraph HTTP app.

    `store`, `search` and `recommender` may be passed in ready-made (tests, embedding in
    another service); otherwise they are opened from `workspace` and the environment. A store
    passed in is not closed by the app. `load_search=False` / `load_recommender=False` start
    without that part (then POST /admin/reload). `personaliser` overrides the default search
    personalisation, which re-ranks by the loaded recommender (see `personalise`).
    `follow_events` polls the store's event log while the app runs, so events that other
    processes (the other `--workers`, a batch import) write reach this one's recommendations;
    default `SHOPGRAPH_FOLLOW_EVENTS` (set to 1 by `shopgraph serve --workers N`), else off.
    """
    if follow_events is None:
        follow_events = os.environ.get("SHOPGRAPH_FOLLOW_EVENTS", "0") == "1"
    workspace = Path(workspace) if workspace is not None else default_workspace()
    services = Services(workspace, store, store_kind or default_store_kind(), warm=warm)
    if search is not None:
        services.use_search(search)
    if recommender is not None:
        services.use_recommender(recommender)
    if (search is None and load_search) or (recommender is None and load_recommender):
        _load_at_startup(services, load_search and search is None,
                         load_recommender and recommender is None)
    upload_limit = max_upload_bytes or _max_upload_from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if follow_events:
            services.start_following()
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
    _add_recommendation_routes(app, services)
    _add_operational_routes(app, services, metrics)
    _add_page_routes(app, services)
    return app


# ---- search ---------------------------------------------------------------------------------
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="How many results (1-100)")]
UserParam = Annotated[str | None, Query(
    description="Personalise with this user's history: hits re-ranked by the recommender's "
                "blend for the user (when a recommender is loaded); 404 for an unknown user")]


def _run_search(request: Request, services: Services, query: str | None, image: Any, k: int,
                category: str | None, brand: str | None, user: str | None) -> SearchOut:
    from recommender.content import NoVectorsError

    loaded = services.require_search()  # read once: a reload mid-request does not affect us
    try:
        result = loaded.search.search(query, image=image, k=k, category=category, brand=brand)
    except NoVectorsError as exc:  # a lexical build: the server lacks vectors, not the request
        raise HTTPException(503, detail=str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    hits = result.hits
    personaliser: Personaliser | None = (getattr(request.app.state, "personaliser", None)
                                         or services.personaliser())
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
    ) -> Response:
        """Text search: the query is mapped onto graph concepts, then BM25, dense text,
        joint-space and graph-match scores are fused."""
        return _json(_run_search(request, services, q, None, k, category, brand, user))

    @app.post("/search/image", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def search_image(
        request: Request,
        image: Annotated[UploadFile, File(description="A photo (JPEG, PNG, WebP, ...)")],
        q: Annotated[str | None, Form(max_length=500, description="Optional words")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K, description="How many results (1-100)")] = 10,
        category: Annotated[str | None, Form(description='e.g. "Footwear"')] = None,
        brand: Annotated[str | None, Form(description="Brand name")] = None,
        user: UserParam = None,
    ) -> Response:
        """Image search, optionally with words: finds visually similar and same-type products."""
        picture = _read_image(image, request.app.state.max_upload_bytes)
        return _json(_run_search(request, services, (q or "").strip() or None, picture, k,
                                 category, brand, user))


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
def public_image(product_id: str, image: Any) -> str | None:
    """What a client may see of a product's `image`: an http(s) URL as it is, a local file as
    this API's `/products/{id}/image` URL (server paths never leave the server), else None."""
    if not isinstance(image, str) or not image.strip():
        return None
    if "://" in image:
        return image if urlsplit(image).scheme.lower() in ("http", "https") else None
    return f"/products/{quote(product_id, safe='')}/image"


def _public_props(label: str, node_id: str, props: dict[str, Any]) -> dict[str, Any]:
    if label != PRODUCT or "image" not in props:
        return props
    return {**props, "image": public_image(node_id, props["image"])}


def _node(label: str, node_id: str, props: dict[str, Any]) -> NodeOut:
    return NodeOut(label=label, id=node_id, properties=_public_props(label, node_id, props))


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
        return ProductOut(id=product_id, properties=_public_props(PRODUCT, product_id, props),
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


# ---- recommendations and events -------------------------------------------------------------
def _json(body: BaseModel, headers: dict[str, str] | None = None, status: int = 200
          ) -> Response:
    """`body` serialised once, by pydantic. Returning the model instead makes FastAPI validate
    it again against `response_model` and encode it through Python dicts: about 1 ms more per
    10-item answer on the dev machine, a quarter of a recommendation's time. The route keeps
    `response_model` for the OpenAPI schema."""
    return Response(body.model_dump_json(), status_code=status, media_type="application/json",
                    headers=headers)


def _item(rec: Recommendation, reasons: bool) -> RecommendationOut:
    body = rec.to_dict()
    body["reasons"] = body["reasons"] if reasons else None
    body["image"] = public_image(rec.id, body.get("image"))
    return RecommendationOut(**body)


def _add_recommendation_routes(app: FastAPI, services: Services) -> None:
    from recommender.service import UnknownIdError

    @app.get("/users/{user_id}/recommendations", response_model=RecommendationsOut,
             responses=ERRORS, tags=["recommendations"])
    def recommendations(
        user_id: Annotated[str, PathParam(description="Shopper id")],
        k: KParam = 10,
        category: Annotated[str | None, Query(
            description='Only this category (path prefix, e.g. "Home > Kitchen")')] = None,
        brand: Annotated[str | None, Query(description="Only this brand")] = None,
        exclude_category: Annotated[list[str] | None, Query(
            description="Leave out these categories (path prefixes); repeatable")] = None,
        exclude_brand: Annotated[list[str] | None, Query(
            description="Leave out these brands; repeatable")] = None,
        diversity: Annotated[float, Query(
            ge=0.0, le=1.0, description="0 = pure relevance .. 1 = most diverse (MMR)")] = 0.0,
        explain: Annotated[bool, Query(description="Add readable reasons per item")] = False,
    ) -> Response:
        """Personalised products for a shopper: unseen, in stock, filtered, with reasons on
        request. A shopper with a short history gets popular products of the categories they
        touched; events posted to /events count at once."""
        loaded = services.require_recommender()  # read once: a reload does not affect us

        def ask() -> list[Recommendation]:
            return loaded.service.recommend(
                user_id, k=k, category=category, brand=brand,
                exclude_categories=tuple(exclude_category or ()),
                exclude_brands=tuple(exclude_brand or ()), diversity=diversity,
                explain=explain)

        try:
            try:
                recs = ask()
            except UnknownIdError as exc:  # in the graph but newer than this version?
                if not services.adopt_user(loaded, user_id):
                    raise HTTPException(404, detail=f"unknown user {user_id!r}: not in the "
                                                    "graph, no history in recommender "
                                                    f"{loaded.version}") from exc
                recs = ask()
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        return _json(RecommendationsOut(user=user_id, version=loaded.version,
                                        items=[_item(r, explain) for r in recs]),
                     {RECOMMENDER_HEADER: loaded.version})

    @app.get("/products/{product_id}/related", response_model=RelatedOut, responses=ERRORS,
             tags=["recommendations"])
    def related(
        product_id: Annotated[str, PathParam(description="Product id")],
        k: KParam = 10,
    ) -> Response:
        """Products related to one product (co-purchase, GNN, ALS, graph paths), with reasons;
        a product nobody bought yet still gets graph neighbours."""
        loaded = services.require_recommender()
        try:
            recs = loaded.service.related(product_id, k=k)
        except UnknownIdError as exc:
            raise HTTPException(404, detail=f"unknown product {product_id!r}") from exc
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        return _json(RelatedOut(product=product_id, version=loaded.version,
                                items=[_item(r, True) for r in recs]),
                     {RECOMMENDER_HEADER: loaded.version})

    import anyio.to_thread

    # Writes run on their own threads, not in the shared pool every read runs in: while the
    # store is unreachable each write waits 30-60 s for the driver's retries to give up, and
    # 40 such writes would otherwise hold every thread of the pool and stall all reads.
    event_writers = anyio.CapacityLimiter(EVENT_WRITERS)

    @app.post("/events", response_model=EventOut, status_code=201, dependencies=[ApiKey],
              responses={**ERRORS, 200: {"model": EventOut, "description": "A duplicate "
                                         "`event_id`: already recorded, nothing changed"},
                         401: {"model": ErrorBody}}, tags=["recommendations"])
    async def events(event: EventIn) -> Response:
        """Record a view, cart or purchase: on disk in the graph store when this answers 201
        (503 when the store cannot be reached, and then nothing is recorded), then applied to
        the live recommender, so the shopper's next recommendations reflect it. Give an
        `event_id` to make retries safe: a repeat answers 200 and changes nothing."""
        out = await anyio.to_thread.run_sync(services.record_event, event,
                                             limiter=event_writers)
        return _json(out, status=200 if out.status == "duplicate" else 201)

    @app.post("/events/batch", response_model=EventsOut, dependencies=[ApiKey],
              responses={**ERRORS, 401: {"model": ErrorBody}}, tags=["recommendations"])
    async def events_batch(
        events: Annotated[list[EventIn], Body(max_length=MAX_EVENT_BATCH)],
    ) -> Response:
        """Record up to 5,000 events in one durable transaction (a shop's event stream,
        a back-fill). Each result says `recorded`, `duplicate` (its `event_id` was seen
        before) or `unknown_product` (not recorded); the rest are recorded all the same."""
        out = await anyio.to_thread.run_sync(services.record_events, events,
                                             limiter=event_writers)
        return _json(EventsOut(
            recorded=sum(r.status == "recorded" for r in out),
            duplicates=sum(r.status == "duplicate" for r in out),
            unknown_products=sum(r.status == "unknown_product" for r in out), results=out))


# ---- operations -----------------------------------------------------------------------------
def _add_operational_routes(app: FastAPI, services: Services, metrics: ApiMetrics) -> None:
    @app.get("/health", response_model=HealthOut, tags=["operations"])
    async def health() -> HealthOut:
        """Liveness: the process answers (nothing else is checked)."""
        return HealthOut()

    @app.get("/ready", response_model=ReadyOut, responses={503: {"model": ErrorBody}},
             tags=["operations"])
    def ready() -> ReadyOut:
        """Readiness: the graph store answers a query and search artifacts, the recommender or
        both are loaded; `not_loaded` says what is missing and why."""
        search, recommender = services.current, services.recommender
        if search is None and recommender is None:
            raise HTTPException(503, detail=f"nothing to serve: search: {services.search_error}; "
                                            f"recommender: {services.recommender_error} (run "
                                            "`shopgraph train`, then POST /admin/reload)")
        with services.reading() as store:
            try:
                store.get_node(PRODUCT, "__readiness_probe__")
            except HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                raise HTTPException(503, detail=f"graph store unavailable: {exc}") from exc
        not_loaded = {}
        if search is None:
            not_loaded["search"] = services.search_error or "not loaded"
        if recommender is None:
            not_loaded["recommender"] = services.recommender_error or "not loaded"
        return ReadyOut(products=search.products if search else None,
                        artifacts=search.version if search else None,
                        recommender=recommender.version if recommender else None,
                        recommender_users=recommender.users if recommender else None,
                        store=getattr(store, "name", type(store).__name__),
                        pid=os.getpid(), event_seq=services.event_cursor,
                        not_loaded=not_loaded)

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
        """Load the workspace's current search artifacts and recommender version and swap
        them in without dropping requests; a part that fails keeps its old version (503)."""
        started = time.perf_counter()
        report = services.reload()
        if report.failed or (services.current is None and services.recommender is None):
            metrics.reloads.labels("failed").inc()
            search, recommender = services.current, services.recommender
            serving = ", ".join(part for part in (
                f"search {search.version}" if search else "",
                f"recommender {recommender.version}" if recommender else "") if part)
            problems = "; ".join(f"{part}: {reason}" for part, reason in
                                 {**report.absent, **report.failed}.items())
            raise HTTPException(503, detail=f"reload failed, still serving "
                                            f"{serving or 'nothing'}: {problems}")
        metrics.reloads.labels("ok").inc()
        search, recommender = report.search, report.recommender
        previous_search, previous_rec = report.previous_search, report.previous_recommender
        return ReloadOut(
            products=search.products if search else None,
            artifacts=search.version if search else None,
            previous_artifacts=previous_search.version if previous_search else None,
            recommender=recommender.version if recommender else None,
            previous_recommender=previous_rec.version if previous_rec else None,
            not_loaded=report.absent,
            seconds=round(time.perf_counter() - started, 3))


# ---- shop-front page ------------------------------------------------------------------------
WEB_DIR = Path(__file__).resolve().parent / "web"
IMAGE_MEDIA_TYPES = {  # photos only: an SVG could run script in the API's origin
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".gif": "image/gif", ".avif": "image/avif", ".bmp": "image/bmp",
}
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {media: {} for media in sorted(set(IMAGE_MEDIA_TYPES.values()))},
          "description": "The product's photo file"},
    307: {"description": "The product's photo is an http(s) URL (generic catalogs): go there"},
    404: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


def _add_page_routes(app: FastAPI, services: Services) -> None:
    """The shop-front page at `/` (assets under `/static`), product photos and a shopper list
    for its user picker; the page itself only calls the JSON endpoints above."""
    app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        index = WEB_DIR / "index.html"
        if not index.is_file():
            raise HTTPException(503, detail=f"the shop-front page is not installed ({index} is "
                                            "missing); the JSON API still serves, see /docs")
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/products/{product_id}/image", response_class=Response, responses=IMAGE_RESPONSES,
             tags=["graph"])
    def product_image(
        product_id: Annotated[str, PathParam(description="Product id")],
    ) -> Response:
        """A product's photo: the file named by the product's own `image` property (never a
        path from the request), or a 307 to it when it is an http(s) URL; 404 when the product
        is unknown, has no photo, or its file is missing or not a photo."""
        with services.reading() as store:
            props = store.get_node(PRODUCT, product_id)
        if props is None:
            raise HTTPException(404, detail=f"no product with id {product_id!r}")
        image = props.get("image")
        if not isinstance(image, str) or not image.strip():
            raise HTTPException(404, detail=f"product {product_id!r} has no image")
        if "://" in image:
            if urlsplit(image).scheme.lower() in ("http", "https"):
                return RedirectResponse(image, status_code=307)
            raise HTTPException(404, detail=f"product {product_id!r} has an image URL that is "
                                            "not http(s)")
        path = Path(image)
        media_type = IMAGE_MEDIA_TYPES.get(path.suffix.lower())
        if media_type is None:
            raise HTTPException(404, detail=f"product {product_id!r}'s image is not a photo "
                                            f"file ({', '.join(IMAGE_MEDIA_TYPES)})")
        if not path.is_file():
            raise HTTPException(404, detail=f"product {product_id!r}'s image file is missing")
        return FileResponse(path, media_type=media_type,
                            headers={"Cache-Control": "public, max-age=3600",
                                     "X-Content-Type-Options": "nosniff"})

    @app.get("/users", response_model=UsersOut, responses=ERRORS, tags=["recommendations"])
    def users(
        response: Response,
        limit: Annotated[int, Query(ge=1, le=1000, description="Most ids returned")] = 50,
        prefix: Annotated[str | None, Query(
            max_length=200, description="Only ids starting with this")] = None,
    ) -> UsersOut:
        """Shopper ids the loaded recommender knows (the shop front's user picker): the first
        `limit`, optionally only those starting with `prefix`."""
        loaded = services.require_recommender()
        known = loaded.service.user_ids
        total = len(known)  # live events may append meanwhile; a slice is still consistent
        chosen = (list(islice((u for u in known[:total] if u.startswith(prefix)), limit))
                  if prefix else known[:min(limit, total)])
        response.headers[RECOMMENDER_HEADER] = loaded.version
        return UsersOut(version=loaded.version, total=total, users=chosen)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shopgraph")
    except PackageNotFoundError:
        return "0.0.0"
