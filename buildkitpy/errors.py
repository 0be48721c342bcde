"""Errors that cross component boundaries, and how they become gRPC statuses.

BuildKit attaches typed details to a failed call's ``google.rpc.Status``: each is an ``Any`` whose
type URL is ``github.com/moby/buildkit/<proto name>+json`` and whose value is the Go JSON encoding of
that message. buildctl uses ``errdefs.Vertex`` to name the failing step and ``errdefs.Source`` to print
the Dockerfile snippet; unknown details are ignored by clients, so adding them is always safe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

DETAIL_URL_PREFIX = "github.com/moby/buildkit/"


class BuildkitpyError(Exception):
    """Base for errors we raise on purpose (as opposed to bugs)."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(BuildkitpyError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BuildkitpyError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class Unimplemented(BuildkitpyError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class PermissionDenied(BuildkitpyError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class EntitlementDenied(BuildkitpyError):
    """An entitlement (``network.host``, ``security.insecure``) the daemon or the client did not grant.
    BuildKit reports these as plain errors (gRPC code Unknown), so clients print the message alone,
    with no ``PermissionDenied:`` in front."""


class SessionNotFound(NotFound):
    pass


class Canceled(BuildkitpyError):
    grpc_code = grpc.StatusCode.CANCELLED


@dataclass
class SourceLocation:
    """A place in a frontend source file (e.g. the Dockerfile), for ``errdefs.Source``."""

    filename: str
    data: bytes
    # (start line, start char, end line, end char)
    ranges: list[tuple[int, int, int, int]] = field(default_factory=list)
    language: str = "Dockerfile"


class SolveError(BuildkitpyError):
    """A vertex failed. Carries the vertex digest and, when the frontend gave one, its source."""

    def __init__(self, message: str, *, vertex: str = "", sources: list[SourceLocation] | None = None,
                 exit_code: int | None = None) -> None:
        super().__init__(message)
        self.vertex = vertex
        self.sources = sources or []
        self.exit_code = exit_code


_ERROR_BY_CODE: dict[grpc.StatusCode, type[BuildkitpyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.CANCELLED: Canceled,
}


def from_rpc_status(status) -> BuildkitpyError:
    """An error for a ``google.rpc.Status`` another process sent (a frontend's Return, an LLBBridge
    call's failure): the class follows the code, and :func:`to_rpc_status` gives the same status
    back, details (vertex, source) included."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    err = _ERROR_BY_CODE.get(code, BuildkitpyError)(status.message)
    err.grpc_code = code
    err.rpc_status = status  # type: ignore[attr-defined]
    return err


def detail_any(name: str, payload: dict):
    """An ``Any`` detail in BuildKit's JSON-typed form."""
    from google.protobuf import any_pb2

    return any_pb2.Any(type_url=DETAIL_URL_PREFIX + name + "+json",
                       value=json.dumps(payload, separators=(",", ":")).encode())


# gRPC carries a failed call's message (``grpc-message``, percent-encoded) and its rich status
# (``grpc-status-details-bin``, base64) in HTTP/2 trailers. grpc-core peers (Python, C++, Ruby, Node's
# native client, ...) refuse trailers over 16 KiB and may refuse anything over 8 KiB, and then the
# client sees "metadata size exceeds hard limit" instead of the error. So every error leaving the
# daemon is bounded: the message to MAX_MESSAGE_WIRE_BYTES on the wire (its start and its end kept,
# the end holding what matters most, such as "exit code: 3"), the status with its details to
# MAX_STATUS_BYTES (source snippets trimmed to what clients print, then dropped).
MAX_MESSAGE_WIRE_BYTES = 1536
MAX_STATUS_BYTES = 4096
_SOURCE_CONTEXT_LINES = 4  # buildctl prints up to 4 lines around a source range
_MAX_SOURCE_LINE = 160
_PRINTABLE = bytes(range(0x20, 0x7F)).replace(b"%", b"")


def _wire_cost(text: str) -> int:
    """Bytes ``text`` takes as a percent-encoded grpc-message."""
    raw = text.encode("utf-8", "replace")
    return len(raw) + 2 * len(raw.translate(None, _PRINTABLE))


def _take(chars, budget: int) -> int:
    """How many of ``chars`` fit in ``budget`` wire bytes."""
    used = taken = 0
    for ch in chars:
        used += _wire_cost(ch)
        if used > budget:
            break
        taken += 1
    return taken


def bounded_message(text: str, limit: int = MAX_MESSAGE_WIRE_BYTES) -> str:
    """``text`` as valid UTF-8 that fits ``limit`` wire bytes: if it is longer, its start and its
    end (twice as much) around a marker saying how much was left out."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) * 12 <= limit or _wire_cost(text) <= limit:
        return text
    budget = limit - 48  # the marker
    head = _take(text[: budget], budget // 3)
    tail = _take(reversed(text[-budget:]), budget - budget // 3)
    omitted = len(text) - head - tail
    return f"{text[:head]} [... {omitted} characters omitted ...] {text[len(text) - tail:]}"


def _trimmed_source(src: SourceLocation) -> SourceLocation:
    """``src`` with only the lines a client prints: the ones before emptied (so line numbers hold),
    the ones after dropped, long lines clipped."""
    lines = src.data.decode("utf-8", "replace").split("\n")
    starts = [r[0] for r in src.ranges] or [1]
    ends = [r[2] for r in src.ranges] or [1]
    lo, hi = min(starts) - _SOURCE_CONTEXT_LINES, max(ends) + _SOURCE_CONTEXT_LINES
    first = max(lo, 1) - 1  # index of the first line kept
    kept = [""] * min(first, len(lines)) + [line[:_MAX_SOURCE_LINE] + (" ..." if len(line) > _MAX_SOURCE_LINE
                                                                      else "") for line in lines[first:hi]]
    return SourceLocation(src.filename, "\n".join(kept).encode(), src.ranges, src.language)


def _first_lines(src: SourceLocation) -> SourceLocation:
    """``src`` trimmed to the first few lines of its first range (an instruction of thousands of
    continuation lines is shown by its start)."""
    first = src.ranges[:1] or [(1, 0, 1, 0)]
    start, char, end, end_char = first[0]
    if end - start > 2 * _SOURCE_CONTEXT_LINES:
        end, end_char = start + 2 * _SOURCE_CONTEXT_LINES, 0
    clipped = SourceLocation(src.filename, src.data, [(start, char, end, end_char)], src.language)
    return _trimmed_source(clipped)


def _merged(src: SourceLocation) -> SourceLocation:
    """``src`` with its ranges sorted and adjacent ones joined (the same lines marked): a frontend
    gives one range per line (BuildKit's too), so a RUN of 100,000 continuation lines would
    otherwise carry 100,000 ranges."""
    out: list[tuple[int, int, int, int]] = []
    for r in sorted(src.ranges):
        if out and r[0] <= out[-1][2] + 1:
            if (r[2], r[3]) > (out[-1][2], out[-1][3]):
                out[-1] = (out[-1][0], out[-1][1], r[2], r[3])
        else:
            out.append(r)
    return SourceLocation(src.filename, src.data, out, src.language)


def _source_detail(src: SourceLocation):
    import base64

    return detail_any("errdefs.Source", {
        "info": {"filename": src.filename, "data": base64.b64encode(src.data).decode(),
                 "language": src.language},
        "ranges": [{"start": {"line": a, "character": b}, "end": {"line": c, "character": d}}
                   for a, b, c, d in src.ranges],
    })


def _source_candidates(sources: list[SourceLocation]) -> Iterator[list[SourceLocation]]:
    """What to try sending, largest first: the sources as the frontend gave them (when they can fit:
    data and ranges only grow in the detail), then trimmed with their ranges joined, then only the
    first lines of the first range."""
    if sum(len(src.data) + 16 * len(src.ranges) for src in sources) <= MAX_STATUS_BYTES:
        yield sources
    merged = [_merged(src) for src in sources]
    yield [_trimmed_source(src) for src in merged]
    yield [_first_lines(src) for src in merged]


def to_rpc_status(err: BaseException):
    """``google.rpc.Status`` for an exception, with errdefs details where we know them, bounded
    to fit any gRPC peer's trailer limit (see MAX_STATUS_BYTES)."""
    from google.rpc import status_pb2

    if getattr(err, "rpc_status", None) is not None:
        return err.rpc_status  # type: ignore[attr-defined]
    code = getattr(err, "grpc_code", grpc.StatusCode.UNKNOWN)
    st = status_pb2.Status(code=code.value[0], message=bounded_message(str(err) or "unknown error"))
    if isinstance(err, SolveError):
        if err.vertex:
            st.details.append(detail_any("errdefs.Vertex", {"digest": err.vertex}))
        for candidate in _source_candidates(err.sources):
            sources = [_source_detail(src) for src in candidate]
            if st.ByteSize() + sum(d.ByteSize() + 4 for d in sources) <= MAX_STATUS_BYTES:
                st.details.extend(sources)
                break
    return st


async def abort_with(context, err: BaseException) -> None:
    """Abort a grpc.aio call with ``err`` as a rich status (never returns)."""
    from grpc_status import rpc_status

    await context.abort_with_status(rpc_status.to_status(to_rpc_status(err)))


def leaf_errors(err: BaseException) -> list[BaseException]:
    """The plain exceptions inside (possibly nested) exception groups, in order."""
    if not isinstance(err, BaseExceptionGroup):
        return [err]
    return [leaf for sub in err.exceptions for leaf in leaf_errors(sub)]


def unwrap(err: BaseException) -> BaseException:
    """The error worth reporting inside (possibly nested) exception groups from task groups:
    the first of our own errors, else the first leaf."""
    if isinstance(err, BaseExceptionGroup):
        leaves = leaf_errors(err)
        for leaf in leaves:
            if isinstance(leaf, BuildkitpyError):
                return leaf
        return leaves[0] if leaves else err
    return err


async def abort_for(context, err: BaseException, where: str) -> None:
    """Abort a call for any exception: ours become rich statuses, cancellations CANCELLED, and
    anything unexpected is logged with its traceback and reported as INTERNAL."""
    import asyncio

    err = unwrap(err)
    if isinstance(err, BuildkitpyError):
        await abort_with(context, err)
    if isinstance(err, asyncio.CancelledError | Canceled):
        raise err
    internal = internal_error(err, where)
    await abort_with(context, internal)


class InternalError(BuildkitpyError):
    """A bug or an unforeseen failure: the client gets an id to find the traceback in the log."""

    grpc_code = grpc.StatusCode.INTERNAL


def internal_error(err: BaseException, where: str) -> BuildkitpyError:
    """Log ``err`` with its traceback under a fresh id and return the error the client sees.

    An OSError keeps its cause ("no space left on device", ...), which the user can act on; no
    Python type name or traceback ever reaches the client."""
    import errno as _errno
    import logging
    import secrets

    incident = secrets.token_hex(6)
    logging.getLogger("buildkitpy").error("%s failed (internal error id %s)", where, incident, exc_info=err)
    if isinstance(err, OSError) and err.errno:
        cause = (err.strerror or _errno.errorcode.get(err.errno, str(err.errno))).lower()
        out: BuildkitpyError = InternalError(f"{cause} (internal error id {incident})")
        if err.errno == _errno.ENOSPC:
            out.grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
        return out
    return InternalError(f"internal error (id {incident}), see the daemon log")


def unary_handler(service: str):
    """Decorator for a unary servicer method: our errors become rich statuses, anything
    unexpected is logged and reported as INTERNAL (one bad call never takes the daemon down)."""
    import functools

    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            try:
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except BaseException as exc:  # noqa: BLE001 - last line of defence for one RPC
                await abort_for(context, exc, f"{service}.{method.__name__}")

        return wrapper

    return decorate
