"""Errors that cross component boundaries, and how they become gRPC statuses.

BuildKit attaches typed details to a failed call's ``google.rpc.Status``: each is an ``Any`` whose
type URL is ``github.com/moby/buildkit/<proto name>+json`` and whose value is the Go JSON encoding of
that message. buildctl uses ``errdefs.Vertex`` to name the failing step and ``errdefs.Source`` to print
the Dockerfile snippet; unknown details are ignored by clients, so adding them is always safe.
"""

from __future__ import annotations

import json
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


def detail_any(name: str, payload: dict):
    """An ``Any`` detail in BuildKit's JSON-typed form."""
    from google.protobuf import any_pb2

    return any_pb2.Any(type_url=DETAIL_URL_PREFIX + name + "+json",
                       value=json.dumps(payload, separators=(",", ":")).encode())


def to_rpc_status(err: BaseException):
    """``google.rpc.Status`` for an exception, with errdefs details where we know them."""
    import base64

    from google.rpc import status_pb2

    code = getattr(err, "grpc_code", grpc.StatusCode.UNKNOWN)
    st = status_pb2.Status(code=code.value[0], message=str(err) or type(err).__name__)
    if isinstance(err, SolveError):
        if err.vertex:
            st.details.append(detail_any("errdefs.Vertex", {"digest": err.vertex}))
        for src in err.sources:
            st.details.append(detail_any("errdefs.Source", {
                "info": {"filename": src.filename, "data": base64.b64encode(src.data).decode(),
                         "language": src.language},
                "ranges": [{"start": {"line": a, "character": b}, "end": {"line": c, "character": d}}
                           for a, b, c, d in src.ranges],
            }))
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
    import logging

    err = unwrap(err)
    if isinstance(err, BuildkitpyError):
        await abort_with(context, err)
    if isinstance(err, asyncio.CancelledError | Canceled):
        raise err
    logging.getLogger("buildkitpy").error("%s failed", where, exc_info=err)
    await context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")


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
