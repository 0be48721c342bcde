"""Build jobs, keyed by the client's Solve ``Ref``.

``Control.Solve`` creates a job; ``Control.Status`` and the LLBBridge calls of a client-side gateway
build (metadata ``buildkit-controlapi-buildid``) find it by ref, waiting a little because clients
start all three at once. Finished jobs stay for a while so a late ``Status`` can replay them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from buildkitpy.errors import BuildkitpyError, InvalidArgument, NotFound
from buildkitpy.progress import ProgressBus

if TYPE_CHECKING:
    from buildkitpy.attest.capture import BuildCapture
    from buildkitpy.gateway.bridge import GatewayBridge
    from buildkitpy.history.recorder import BuildRecording

KEEP_FINISHED = 64
KEEP_FINISHED_SECONDS = 600


class AlreadyExists(BuildkitpyError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


@dataclass
class Job:
    ref: str
    session_id: str = ""
    frontend_attrs: dict[str, str] = field(default_factory=dict)
    entitlements: frozenset[str] = frozenset()
    progress: ProgressBus = field(default_factory=ProgressBus)
    created: float = field(default_factory=time.time)
    finished: float | None = None
    # Set for client-side gateway builds: the result the client hands over with LLBBridge.Return.
    bridge: GatewayBridge | None = None
    # The build's history record being filled (None for internal builds or without history).
    history: BuildRecording | None = None
    # What the build used, for its provenance (None for builds nobody captures).
    provenance: BuildCapture | None = None


class JobRegistry:
    def __init__(self) -> None:
        self._active: dict[str, Job] = {}
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._changed = asyncio.Condition()
        # Held while content GC deletes blobs: a build starting meanwhile waits (it could pick a
        # blob about to go), and the GC sees every build that started before (BuildKit: leases).
        self._admission = threading.Lock()

    async def create(self, job: Job) -> Job:
        if not job.ref:
            raise InvalidArgument("solve request has no ref")
        while not self._admission.acquire(blocking=False):
            await asyncio.sleep(0.01)  # (polling: a cancelled build never leaves the lock taken)
        try:
            async with self._changed:
                if job.ref in self._active:
                    raise AlreadyExists(f"build {job.ref} is already running")
                self._finished.pop(job.ref, None)
                self._active[job.ref] = job
                self._changed.notify_all()
        finally:
            self._admission.release()
        return job

    @contextmanager
    def quiesced(self) -> Iterator[bool]:
        """Keeps builds from starting while entered; yields whether none is running (blocking:
        enter it from a thread, never from the event loop)."""
        with self._admission:
            yield not self._active

    async def finish(self, job: Job) -> None:
        job.finished = time.time()
        job.progress.close()
        # Kept for its progress only (a late Status replays it): what the build held goes now
        # (the graph, its results and the provenance capture: ~15 MB for a 500-vertex build, and
        # up to KEEP_FINISHED jobs are kept).
        job.bridge = None
        job.history = None
        job.provenance = None
        async with self._changed:
            if self._active.get(job.ref) is job:
                del self._active[job.ref]
            self._finished[job.ref] = job
            while len(self._finished) > KEEP_FINISHED:
                self._finished.popitem(last=False)
            cutoff = time.time() - KEEP_FINISHED_SECONDS
            for ref in [r for r, j in self._finished.items() if (j.finished or 0) < cutoff]:
                del self._finished[ref]

    def active(self) -> list[Job]:
        return list(self._active.values())

    async def get(self, ref: str, timeout: float, *, include_finished: bool = True) -> Job:
        """The job for ``ref``, waiting up to ``timeout`` seconds for it to be created."""

        def lookup() -> Job | None:
            job = self._active.get(ref)
            if job is None and include_finished:
                job = self._finished.get(ref)
            return job

        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: lookup() is not None)
            except TimeoutError:
                raise NotFound(f"no such job {ref}") from None
            job = lookup()
            assert job is not None
            return job
