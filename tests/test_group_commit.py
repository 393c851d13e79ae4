"""Group commit on its own: groups share a call, each caller gets its own slice or error."""

from __future__ import annotations

import threading

import pytest

from kg.group_commit import GroupCommitter
from kg.store import InteractionEvent, RecordedInteraction


def recorder(calls: list[int], gate: threading.Event | None = None):
    def commit(events):
        if gate is not None:
            gate.wait(5)
        calls.append(len(events))
        if any(e.kind == "boom" for e in events):
            raise OSError("disk full")
        return [RecordedInteraction(e, "recorded", count=i) for i, e in enumerate(events)]
    return commit


def test_waiting_groups_share_one_commit() -> None:
    calls: list[int] = []
    gate = threading.Event()
    committer = GroupCommitter(recorder(calls, gate))
    results: dict[int, list[RecordedInteraction]] = {}

    def post(n: int) -> None:
        results[n] = committer.submit([InteractionEvent(f"u{n}", "p", "view", n)] * (n + 1))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(6)]
    threads[0].start()
    while not calls and committer._queue.qsize():  # the first group is taken alone
        pass
    for t in threads[1:]:
        t.start()
    while committer._queue.qsize() < 5:
        pass
    gate.set()
    for t in threads:
        t.join()
    committer.close()
    assert sum(calls) == sum(range(1, 7)) and len(calls) == 2  # 1 alone, then 5 together
    for n, got in results.items():
        assert [r.event.user_id for r in got] == [f"u{n}"] * (n + 1)


def test_a_failed_commit_fails_every_group_in_it() -> None:
    calls: list[int] = []
    committer = GroupCommitter(recorder(calls))
    with pytest.raises(OSError, match="disk full"):
        committer.submit([InteractionEvent("u", "p", "boom", 1)])
    assert committer.submit([InteractionEvent("u", "p", "view", 1)])[0].status == "recorded"
    committer.close()
    with pytest.raises(RuntimeError, match="closed"):
        committer.submit([InteractionEvent("u", "p", "view", 1)])
