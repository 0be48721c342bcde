"""Errors from the daemon, decoded from their gRPC status, and printed the way buildctl prints them.

A failed call carries a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer. Its details
are ``Any`` messages; BuildKit's typed details use the URL ``github.com/moby/buildkit/<name>+json``
with a Go-JSON value (see ``buildkitpy.errors``). ``errdefs.Source`` details make buildctl print the
offending Dockerfile lines before the ``error: ...`` line.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import TextIO

import grpc
from google.rpc import status_pb2

DETAIL_URL_PREFIX = "github.com/moby/buildkit/"
SOURCE_DETAIL = DETAIL_URL_PREFIX + "errdefs.Source+json"
VERTEX_DETAIL = DETAIL_URL_PREFIX + "errdefs.Vertex+json"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def go_code_name(code: grpc.StatusCode) -> str:
    """Go's ``codes.Code.String()`` spelling: NOT_FOUND → NotFound, OK → OK."""
    name = code.name
    if name == "OK":
        return "OK"
    return "".join(part.capitalize() for part in name.split("_"))


@dataclass
class SourceSnippet:
    """An ``errdefs.Source`` detail: a file (usually the Dockerfile) and the line ranges to mark."""

    filename: str
    data: bytes
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (start line, end line), 1-based
    language: str = ""

    @classmethod
    def from_json(cls, payload: dict) -> SourceSnippet:
        info = payload.get("info") or {}
        raw = info.get("data") or ""
        try:
            data = base64.b64decode(raw, validate=True) if raw else b""
        except (binascii.Error, ValueError):
            data = raw.encode() if isinstance(raw, str) else b""
        ranges = []
        for r in payload.get("ranges") or []:
            start = int((r.get("start") or {}).get("line", 0))
            end = int((r.get("end") or {}).get("line", 0))
            ranges.append((start, end))
        return cls(filename=info.get("filename", ""), data=data, ranges=ranges,
                   language=info.get("language", ""))

    def render(self) -> str:
        """The snippet as buildctl prints it, or "" if the ranges do not point into the file."""
        if not self.ranges:
            return ""
        lines = self.data.decode(errors="replace").split("\n")
        start = min(s for s, _ in self.ranges)
        end = max(max(s, e) for s, e in self.ranges)
        if start > len(lines) or start < 1:
            return ""
        end = min(end, len(lines))
        # Context: two lines around a range, four around a single line (as BuildKit pads).
        pad = 4 if end == start else 2
        first_marked = start
        p = 0
        while p < pad:
            if start > 1:
                start -= 1
                p += 1
            if end != len(lines):
                end += 1
                p += 1
            p += 1
        out = [f"{self.filename}:{first_marked}", "-" * 20]
        for i in range(start, end + 1):
            marker = ">>>" if self._marks(i) else "   "
            out.append(f" {i:3d} | {marker} {lines[i - 1]}")
        out.append("-" * 20)
        return "\n".join(out) + "\n"

    def _marks(self, line: int) -> bool:
        return any(s <= line <= max(s, e) for s, e in self.ranges)


class BuildkitError(Exception):
    """A failed daemon call, with what the typed details told us."""

    def __init__(self, message: str, *, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
                 sources: list[SourceSnippet] | None = None, vertex: str = "",
                 status: status_pb2.Status | None = None, context: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.sources = sources or []
        self.vertex = vertex
        self.status = status
        self.context = context  # e.g. "failed to solve"

    def __str__(self) -> str:
        text = self.message
        if self.code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
            text = f"{go_code_name(self.code)}: {text}"
        return f"{self.context}: {text}" if self.context else text

    def with_context(self, context: str) -> BuildkitError:
        self.context = f"{context}: {self.context}" if self.context else context
        return self

    def rpc_status(self) -> status_pb2.Status:
        """A ``google.rpc.Status`` carrying this error (for ``LLBBridge.Return{Error}``)."""
        if self.status is not None:
            return self.status
        return status_pb2.Status(code=self.code.value[0], message=self.message)


def status_from_rpc_error(err: grpc.RpcError) -> status_pb2.Status:
    """The rich status of a failed call (code + message + details), from its trailers."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    message = err.details() if callable(getattr(err, "details", None)) else str(err)
    trailers = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            st = status_pb2.Status()
            try:
                st.ParseFromString(value)
            except Exception:  # a corrupt trailer must not hide the error itself
                break
            return st
    return status_pb2.Status(code=(code or grpc.StatusCode.UNKNOWN).value[0], message=message or "")


def from_status(st: status_pb2.Status, *, context: str = "") -> BuildkitError:
    code = next((c for c in grpc.StatusCode if c.value[0] == st.code), grpc.StatusCode.UNKNOWN)
    sources: list[SourceSnippet] = []
    vertex = ""
    for detail in st.details:
        if detail.type_url not in (SOURCE_DETAIL, VERTEX_DETAIL):
            continue
        try:
            payload = json.loads(detail.value)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(payload, dict):
            continue
        if detail.type_url == SOURCE_DETAIL:
            sources.append(SourceSnippet.from_json(payload))
        else:
            vertex = str(payload.get("digest", ""))
    return BuildkitError(st.message, code=code, sources=sources, vertex=vertex, status=st,
                         context=context)


def from_rpc_error(err: grpc.RpcError, *, context: str = "") -> BuildkitError:
    return from_status(status_from_rpc_error(err), context=context)


def print_error(err: BaseException, out: TextIO, *, debug: bool = False) -> None:
    """buildctl's ``handleErr``: Dockerfile snippets first, then ``error: <message>``."""
    if isinstance(err, BuildkitError):
        for src in err.sources:
            out.write(src.render())
    if debug and isinstance(err, BuildkitError) and err.status is not None:
        out.write(f"error: {err}\n{err.status}\n")
    else:
        out.write(f"error: {err}\n")
    out.flush()
