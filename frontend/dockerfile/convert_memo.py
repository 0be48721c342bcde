"""Remembered conversions: a Dockerfile built again with the same inputs is not converted again.

A client builds the same Dockerfile over and over, and all that changes in its LLB from one build to
the next is the client's session: the id in the local sources (the context, the Dockerfile), and so
the digests of every op above them. Converting graph-500's 500 instructions again (parse, expand,
dispatch, marshal) was a tenth of the daemon's time for the whole cached build.

So the definitions and image configs of a conversion are kept under everything the conversion
reads: the Dockerfile, the frontend options, the ``.dockerignore`` patterns, the file name, the build
platform, the LLB caps, the Dockerfile's own source (with its session left out) and the linter's
configuration (in the options and the Dockerfile). What it asks from outside, the image configs of
its bases, are asked again in the same order (as the conversion would: the same progress, the same
provenance materials) and must be the same answers. Then the kept definitions get the new session:
the local sources of the old session get the new one (ids have one length, so the bytes are those a
conversion would make), and each op's inputs the new digests of what changed below it, which is
checked: no op may keep the old session.

Not remembered: conversions that warned (the linter's warnings would have to be replayed), with
named contexts or a remote context (states from elsewhere), without a session; and a remembered one
is used only where the states of a conversion are not needed (they are an earlier build's): the
build's definitions and image configs, no SBOM scan.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.llb.vertex import digest_of

from .convert import ConvertResult, PlatformResult

MAX_REMEMBERED = 16  # conversions kept
MAX_DOCKERFILE = 256 << 10  # bytes of a Dockerfile at most, for its conversion to be kept

_DIGEST = re.compile(rb"sha256:[0-9a-f]{64}")

Resolver = Callable[[str, llb.Platform], Awaitable[tuple[str, bytes]]]


@dataclass(frozen=True)
class _Remembered:
    session: str
    resolved: tuple[tuple[str, llb.Platform, tuple[str, bytes]], ...]  # (ref, platform, answer) in order
    results: tuple[tuple[llb.Platform, ops_pb2.Definition, bytes, bytes | None], ...]
    multi: bool


_lock = threading.Lock()
_remembered: dict[tuple, _Remembered] = {}


def memo_key(dockerfile: bytes, *, opts: Mapping[str, str], context_ignore: list[str] | None, session_id: str,
             named_contexts: Mapping[str, Any] | None, llb_caps: Any, build_platform: llb.Platform | None,
             dockerfile_source: llb.State | None, filename: str, main_context: llb.State | None,
             **_: Any) -> tuple | None:
    """What a conversion with these arguments reads but the image configs, its session left out;
    None for a conversion that is not remembered."""
    if not session_id or named_contexts or main_context is not None or len(dockerfile) > MAX_DOCKERFILE:
        return None
    source: tuple = ()
    if dockerfile_source is not None:  # its ops and metadata without the session, and so without
        # the digests (of what holds the session)
        defn = llb.marshal(dockerfile_source)
        source = (tuple(_DIGEST.sub(b"", op.replace(session_id.encode(), b"\0session\0"))
                        for op in getattr(defn, "def")),
                  tuple(sorted(md.SerializeToString(deterministic=True) for md in defn.metadata.values())),
                  _DIGEST.sub(b"", defn.Source.SerializeToString(deterministic=True)))
    return (dockerfile, tuple(sorted(opts.items())), tuple(context_ignore or ()), len(session_id),
            tuple(sorted(llb_caps)) if llb_caps is not None else None,
            str(build_platform) if build_platform is not None else None, source, filename)


def recording(resolve: Resolver | None,
              calls: list[tuple[str, llb.Platform, tuple[str, bytes]]]) -> Resolver | None:
    """``resolve``, noting each answer in ``calls`` (once per image and platform)."""
    if resolve is None:
        return None
    seen: set[tuple[str, str]] = set()

    async def resolver(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
        got = await resolve(ref, platform)
        if (ref, str(platform)) not in seen:
            seen.add((ref, str(platform)))
            calls.append((ref, platform, got))
        return got
    return resolver


def remember(key: tuple, session_id: str, calls: list[tuple[str, llb.Platform, tuple[str, bytes]]],
             result: ConvertResult) -> None:
    kept = []
    for r in result.results:
        definition = ops_pb2.Definition()
        definition.CopyFrom(r.definition)  # (the build's own may be changed by whoever takes it)
        kept.append((r.platform, definition, r.image_config, r.base_config))
    entry = _Remembered(session_id, tuple(calls), tuple(kept), result.multi_platform)
    with _lock:
        if len(_remembered) >= MAX_REMEMBERED:
            _remembered.pop(next(iter(_remembered)))
        _remembered[key] = entry


def recall(key: tuple) -> _Remembered | None:
    with _lock:
        return _remembered.get(key)


async def answers_match(entry: _Remembered, resolve: Resolver | None) -> bool:
    """Asks for the image configs the remembered conversion asked for, in its order: the same
    answers?"""
    for ref, platform, answer in entry.resolved:
        if resolve is None or await resolve(ref, platform) != answer:
            return False
    return True


def rebound(entry: _Remembered, session_id: str) -> ConvertResult | None:
    """The remembered conversion's result for ``session_id`` (blocking: it rewrites every op), or
    None when it cannot be made (ids of another length, the old session elsewhere in an op)."""
    if len(session_id) != len(entry.session):
        return None
    old, new = entry.session.encode(), session_id.encode()
    results = []
    for platform, definition, image_config, base_config in entry.results:
        defn = rebind(definition, old, new)
        if defn is None:
            return None
        results.append(PlatformResult(platform, defn, image_config, base_config, None))
    return ConvertResult(results, entry.multi)


def rebind(definition: ops_pb2.Definition, old: bytes, new: bytes) -> ops_pb2.Definition | None:
    """``definition`` with its local sources of session ``old`` in session ``new`` (and the digests
    of the ops above them changed to match), or None if ``old`` is anywhere else."""
    mapping: dict[bytes, bytes] = {}

    def swap(m: re.Match[bytes]) -> bytes:
        return mapping.get(m.group(0), m.group(0))

    ops: list[bytes] = []
    for data in getattr(definition, "def"):
        before = digest_of(data).encode()
        if mapping:
            data = _DIGEST.sub(swap, data)
        if old in data:
            op = ops_pb2.Op.FromString(data)
            if not (op.WhichOneof("op") == "source" and op.source.identifier.startswith("local://")
                    and op.source.attrs.get("local.session") == old.decode() and data.count(old) == 1):
                return None
            data = data.replace(old, new)
        after = digest_of(data).encode()
        if after != before:
            mapping[before] = after
        ops.append(data)
    out = ops_pb2.Definition()
    getattr(out, "def").extend(ops)
    for dgst, md in definition.metadata.items():
        out.metadata[mapping.get(dgst.encode(), dgst.encode()).decode()].CopyFrom(md)
    if definition.HasField("Source"):
        out.Source.SetInParent()
        for info in definition.Source.infos:
            copy = out.Source.infos.add()
            copy.CopyFrom(info)
            if info.HasField("definition"):
                inner = rebind(info.definition, old, new)
                if inner is None:
                    return None
                copy.definition.CopyFrom(inner)
        for dgst, locs in definition.Source.locations.items():
            out.Source.locations[mapping.get(dgst.encode(), dgst.encode()).decode()].CopyFrom(locs)
    return out
