"""Group commit: concurrent writers share one transaction, and so one flush to disk.

A durable commit costs one fsync (milliseconds) however many rows it carries. One writer thread
takes every group queued while the previous commit was flushing and commits them together, so
throughput grows with concurrency while each caller still returns only once its own events are
on disk. Used by both stores for live events (`GraphStore.record_events`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kg.store import InteractionEvent, RecordedInteraction

Commit = Callable[[Sequence["InteractionEvent"]], "list[RecordedInteraction]"]

MAX_GROUP_EVENTS = 5_000  # one transaction stays short enough to keep the tail latency low


class GroupCommitter:
    """Feeds queued event groups to `commit` on one thread, several groups per call."""

    def __init__(self, commit: Commit, name: str = "group-commit",
                 max_events: int = MAX_GROUP_EVENTS) -> None:
        self._commit = commit
        self._max_events = max_events
        self._queue: queue.SimpleQueue[
            tuple[Sequence[InteractionEvent], Future[list[RecordedInteraction]]] | None
        ] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, events: Sequence[InteractionEvent],
               timeout: float | None = None) -> list[RecordedInteraction]:
        """Record `events` (in order, all or nothing) and wait until they are durable."""
        if self._closed:
            raise RuntimeError("the store is closed")
        future: Future[list[RecordedInteraction]] = Future()
        self._queue.put((list(events), future))
        return future.result(timeout)

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            groups = [first]
            size = len(first[0])
            stop = False
            while size < self._max_events:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                groups.append(more)
                size += len(more[0])
            self._commit_groups(groups)
            if stop:
                return

    def _commit_groups(self, groups: list[tuple[Sequence[InteractionEvent],
                                                Future[list[RecordedInteraction]]]]) -> None:
        events = [e for group, _ in groups for e in group]
        try:
            results = self._commit(events)
        except Exception as exc:  # noqa: BLE001 - nothing was written: every waiter gets it
            for _, future in groups:
                future.set_exception(exc)
            return
        start = 0
        for group, future in groups:
            future.set_result(results[start:start + len(group)])
            start += len(group)
