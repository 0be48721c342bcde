"""ExecOp: run a process in a container over a set of mounts, commit the writable bind mounts.

Cache map as BuildKit: the op with selectors, extra-host IPs and proxy env cleared (and the cache
id/sharing of non-default cache mounts), plus the platform; per input a selector digest over the
mounts' selectors, with content-based keys where safe (read-only mounts, mounts without output, or
whole-input mounts) except on the root mount.
"""

from __future__ import annotations

import posixpath

from buildkitpy.api import ops_pb2
from buildkitpy.errors import EntitlementDenied, InvalidArgument, Unimplemented
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.cachekey import (
    CacheMap,
    Dep,
    Selector,
    go_digest,
    go_marshal,
    go_proto_value,
    selector_digest,
)
from buildkitpy.solver.loader import SCRATCH, SKIP_OUTPUT, Vertex
from buildkitpy.solver.ops.base import OpContext, register_op
from buildkitpy.worker import host_platform

EXEC_CACHE_TYPE = "buildkit.exec.v0"


def _is_default_cache_id(m: ops_pb2.Mount) -> bool:
    """Dockerfile's default cache id is the target (or ``<namespace>/<target>``); keep those in
    the key, as BuildKit's ``checkShouldClearCacheOpts`` does."""
    cid = m.cacheOpt.ID
    _, slash, rest = cid.partition("/")
    return m.cacheOpt.sharing == ops_pb2.SHARED and (cid == m.dest or (bool(slash) and rest == m.dest))


@register_op("exec")
class ExecOp:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex
        self.op = vertex.op.exec
        self.n_inputs = len(vertex.inputs)

    def cache_map(self, ctx: OpContext) -> CacheMap:
        # Checked before any cache lookup, as BuildKit does when it loads the definition: a cached
        # result never lets a build skip the entitlement it would have needed.
        check_entitlements(self.op, ctx.job.entitlements)
        op = ops_pb2.ExecOp()
        op.CopyFrom(self.op)
        for h in op.meta.extraHosts:
            h.IP = ""
        for m in op.mounts:
            m.selector = ""
            if m.HasField("cacheOpt") and not _is_default_cache_id(m):
                m.cacheOpt.ID = ""
                m.cacheOpt.sharing = ops_pb2.SHARED
        op.meta.ClearField("proxy_env")
        if len(op.mounts) == 1:
            m = op.mounts[0]
            if m.dest == "/" and not m.readonly and m.mountType == ops_pb2.BIND and not m.resultID \
                    and not any(m.HasField(f) for f in ("cacheOpt", "SSHOpt", "secretOpt")):
                del op.mounts[:]
        # BuildKit's key: json.Marshal of {Type, Exec, OS, Arch, Variant, OSVersion, OSFeatures}.
        key: dict[str, object] = {"Type": EXEC_CACHE_TYPE, "Exec": go_proto_value(op)}
        if self.vertex.op.HasField("platform"):
            plat = self.vertex.op.platform
            key.update({"OS": plat.OS, "Arch": plat.Architecture})
            optional: dict[str, object] = {"Variant": plat.Variant, "OSVersion": plat.OSVersion,
                                           "OSFeatures": list(plat.OSFeatures)}
        else:
            host = host_platform()
            key.update({"OS": host["os"], "Arch": host["architecture"]})
            optional = {"Variant": host.get("variant", "")}
        key.update({k: v for k, v in optional.items() if v})
        digest = go_digest(go_marshal(key))
        selectors: list[list[str]] = [[] for _ in range(self.n_inputs)]
        content: list[bool | None] = [None] * self.n_inputs
        for m in self.op.mounts:
            if m.mountType in (ops_pb2.SECRET, ops_pb2.SSH, ops_pb2.TMPFS) or m.input == SCRATCH:
                continue
            sel = posixpath.normpath(posixpath.join("/", m.selector))
            selectors[m.input].append(sel)
            safe = m.output == SKIP_OUTPUT or m.readonly or sel == "/"
            if m.contentCache == ops_pb2.OFF:
                safe = False
            elif m.contentCache == ops_pb2.ON:
                if not safe:
                    raise InvalidArgument(f"mount {m.dest}: contentCache=ON is not allowed on a writable "
                                          "mount with an output and a selector")
            elif m.dest == "/":
                safe = False
            content[m.input] = safe
        deps = []
        for sels, safe in zip(selectors, content, strict=True):
            if not sels:
                deps.append(Dep())
                continue
            dep = Dep(selector=selector_digest(sels))
            if safe:
                dep.content = [Selector(path=p) for p in _dedupe_paths(sels)]
            deps.append(dep)
        return CacheMap(digest=digest, deps=deps)

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        from buildkitpy.solver.ops.execrun import run_exec

        if ctx.worker.executor is None:
            raise Unimplemented("this worker has no executor; exec ops cannot run")
        return await run_exec(ctx, self.op, inputs)


def check_entitlements(op: ops_pb2.ExecOp, granted: frozenset[str]) -> None:
    """BuildKit's texts: "network.host is not allowed" / "security.insecure is not allowed"."""
    if op.network == ops_pb2.HOST and "network.host" not in granted:
        raise EntitlementDenied("network.host is not allowed")
    if op.security == ops_pb2.INSECURE and "security.insecure" not in granted:
        raise EntitlementDenied("security.insecure is not allowed")


def _dedupe_paths(paths: list[str]) -> list[str]:
    unique = set(paths)
    return sorted(p for p in unique
                  if not any(o != p and p.startswith(o.rstrip("/") + "/") for o in unique))
