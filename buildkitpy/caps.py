"""The API capabilities we advertise in ``LLBBridge.Ping``.

Clients gate features on these (buildx switches attestations on ``exporter.image.attestations``,
the Dockerfile frontend refuses to run without ``file.base``, and ``client/llb`` refuses to send LLB
whose metadata names a cap we did not list), so the rule is: list exactly what works, nothing more.
Groups that depend on an optional component (runc) are added when it is present.
"""

from __future__ import annotations

import shutil

from buildkitpy.api import caps_pb2

GATEWAY_CAPS = (
    "solve.base",
    "readfile",
    "readdir",
    "statfile",
    "return",
    "returnmap",
    "proto.refarray",
    "frontend.inputs",
    "gateway.solve.metadata",
    "gateway.solve.evaluate",
    "gateway.evaluate",
    "gateway.warnings",
    "resolveimage",
    "resolveimage.resolvemode",
    "source.metaresolver",
)

LLB_CAPS = (
    "source.image",
    "source.image.resolvemode",
    "source.image.layerlimit",
    "source.local",
    "source.local.unique",
    "source.local.sessionid",
    "source.local.includepatterns",
    "source.local.followpaths",
    "source.local.excludepatterns",
    "source.local.sharedkeyhint",
    "source.local.differ",
    "source.http",
    "source.http.checksum",
    "source.http.perm",
    "soruce.http.uidgid",  # sic: BuildKit's cap id
    "source.http.header",
    "source.http.auth",
    "file.base",
    "file.rm.wildcard",
    "file.rm.nofollowsymlink",
    "file.copy.includeexcludepatterns",
    "file.copy.requiredpaths",
    "file.copy.alwaysreplaceexistingdestpaths",
    "file.copy.modestring",
    "file.symlink.create",
    "constraints",
    "platform",
    "meta.ignorecache",
    "meta.description",
    "meta.exportcache",
    "mergeop",
    "diffop",
    "gc.freespacefilter",  # Prune's max-used-space and min-free-space
    "exporter.image.attestations",  # attest:provenance and attest:sbom (buildkitpy.attest)
)

# Present only when the git CLI is installed (the git source runs it).
GIT_LLB_CAPS = (
    "source.git",
    "source.git.keepgitdir",
    "source.git.fullurl",
    "source.git.httpauth",
    "source.git.subdir",
    "source.git.checksum",
    "source.git.skipsubmodules",
    "source.git.mtime",
)

# Present only when the worker can run containers.
EXEC_LLB_CAPS = (
    "source.image",
    "source.image.resolvemode",
    "source.image.layerlimit",
    "exec.meta.base",
    "exec.meta.cgroup.parent",
    "exec.meta.network",
    "exec.meta.proxyenv",
    "exec.meta.security",
    "exec.meta.setsdefaultpath",
    "exec.meta.removemountstubs.recursive",
    "exec.meta.ulimit",
    "exec.mount.bind",
    "exec.mount.bind.readwrite-nooutput",
    "exec.mount.cache",
    "exec.mount.cache.sharing",
    "exec.mount.selector",
    "exec.mount.tmpfs",
    "exec.mount.tmpfs.size",
    "exec.mount.secret",
    "exec.mount.ssh",
    "exec.secretenv",
    "exec.validexitcode",
)


def _caps(ids: list[str]) -> list[caps_pb2.APICap]:
    return [caps_pb2.APICap(ID=cap, Enabled=True) for cap in sorted(set(ids))]


def gateway_caps() -> list[caps_pb2.APICap]:
    return _caps(list(GATEWAY_CAPS))


def llb_caps(*, can_exec: bool) -> list[caps_pb2.APICap]:
    ids = list(LLB_CAPS)
    if can_exec:
        ids += EXEC_LLB_CAPS
    if shutil.which("git"):
        ids += GIT_LLB_CAPS
    return _caps(ids)
