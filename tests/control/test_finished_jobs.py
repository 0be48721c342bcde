"""A finished build stays findable for a late ``Status``, with its progress, and with nothing else:
the bridge it solved through (its graph, results, containers) and its provenance capture go when it
finishes. Up to 64 finished builds are kept; holding a 500-vertex build's graph cost ~15 MB each."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from buildkitpy.gateway.bridge import GatewayBridge
from buildkitpy.jobs import Job, JobRegistry
from tests.solver.conftest import Env

pytestmark = pytest.mark.anyio


async def test_a_finished_job_keeps_its_progress_and_lets_go_of_its_build(tmp_path: Path) -> None:
    env = Env(tmp_path / "worker")
    try:
        jobs = JobRegistry()
        job = await jobs.create(Job(ref="build-1"))
        job.bridge = GatewayBridge(job, env.solver)
        job.progress.vertex("sha256:" + "a" * 64, "[1/1] RUN true", started=True, completed=True)
        bridge = weakref.ref(job.bridge)
        job.bridge.close()
        await jobs.finish(job)
        gc.collect()
        assert bridge() is None

        late = await jobs.get("build-1", 1.0)  # a Status that comes after the build ended
        assert late is job
        replayed = [v.name async for msg in late.progress.subscribe() for v in msg.vertexes]
        assert replayed == ["[1/1] RUN true"]
    finally:
        env.close()
