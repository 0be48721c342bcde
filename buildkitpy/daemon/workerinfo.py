"""The worker record that ``ListWorkers`` and ``LLBBridge.Ping`` report."""

from __future__ import annotations

import socket

from buildkitpy.api import ops_pb2, worker_pb2
from buildkitpy.daemon.config import Config

GB = 1000**3


def default_gc_policies(cfg: Config) -> list[worker_pb2.GCPolicy]:
    if cfg.gc_policies:
        return [worker_pb2.GCPolicy(all=p.all, filters=p.filters, keepDuration=p.keep_duration * 10**9,
                                    reservedSpace=p.reserved_space, maxUsedSpace=p.max_used_space,
                                    minFreeSpace=p.min_free_space) for p in cfg.gc_policies]
    # BuildKit's defaults: short-lived local/cache-mount/git data first, then everything by age.
    return [
        worker_pb2.GCPolicy(filters=["type==source.local", "type==exec.cachemount",
                                     "type==source.git.checkout"],
                            keepDuration=48 * 3600 * 10**9, maxUsedSpace=512_000_000),
        worker_pb2.GCPolicy(keepDuration=60 * 86400 * 10**9, reservedSpace=10 * GB,
                            maxUsedSpace=100 * GB, minFreeSpace=51 * GB),
        worker_pb2.GCPolicy(reservedSpace=10 * GB, maxUsedSpace=100 * GB, minFreeSpace=51 * GB),
        worker_pb2.GCPolicy(all=True, reservedSpace=10 * GB, maxUsedSpace=100 * GB, minFreeSpace=51 * GB),
    ]


def worker_record(worker, cfg: Config) -> worker_pb2.WorkerRecord:
    from buildkitpy.control.service import version_pb

    labels = {
        "org.mobyproject.buildkit.worker.executor": "oci",
        "org.mobyproject.buildkit.worker.hostname": socket.gethostname(),
        "org.mobyproject.buildkit.worker.network": "host",
        "org.mobyproject.buildkit.worker.oci.process-mode": "sandbox",
        "org.mobyproject.buildkit.worker.selinux.enabled": "false",
        "org.mobyproject.buildkit.worker.snapshotter": getattr(worker.snapshots, "kind", "overlayfs"),
    }
    labels.update(worker.labels)
    platforms = [ops_pb2.Platform(OS=p["os"], Architecture=p["architecture"], Variant=p.get("variant", ""))
                 for p in worker.platforms]
    return worker_pb2.WorkerRecord(ID=worker.id, Labels=labels, platforms=platforms,
                                   GCPolicy=default_gc_policies(cfg), BuildkitVersion=version_pb())
