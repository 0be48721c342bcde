"""The ``[history]`` limits on a real store: a record goes once it is both beyond the newest
``max_entries`` (pinned ones aside) and older than ``max_age``; pinned records never go."""

from __future__ import annotations

import asyncio
import time

from buildkitpy.api import control_pb2
from buildkitpy.history.store import HistoryLimits, HistoryStore


def record(ref: str, completed: float, *, pinned: bool = False) -> control_pb2.BuildHistoryRecord:
    rec = control_pb2.BuildHistoryRecord(Ref=ref, pinned=pinned)
    rec.CompletedAt.FromNanoseconds(int(completed * 1e9))
    return rec


def test_only_old_records_beyond_the_newest_go(tmp_path):
    now = time.time()
    store = HistoryStore(tmp_path, HistoryLimits(max_age=3600, max_entries=3))

    async def complete(*recs: control_pb2.BuildHistoryRecord) -> set[str]:
        for rec in recs:
            await store.complete(rec)  # applies the limits
        return {r.Ref for r in store.completed()}

    try:
        kept = asyncio.run(complete(record("pinned", now - 9000, pinned=True),
                                    record("young1", now - 10), record("young2", now - 20),
                                    record("old1", now - 7200), record("old2", now - 7300),
                                    record("old3", now - 7400)))
        # old1 is among the newest three unpinned records: old enough, but it stays
        assert kept == {"pinned", "young1", "young2", "old1"}
        kept = asyncio.run(complete(record("new1", now - 1), record("new2", now - 2)))
        # four records younger than max_age: every old unpinned one goes, the young ones all stay
        assert kept == {"pinned", "young1", "young2", "new1", "new2"}
    finally:
        store.close()
