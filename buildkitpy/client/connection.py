"""Connecting to a BuildKit daemon, and ``Client``: a thin async API over its gRPC services.

::

    async with Client.connect("unix:///run/buildkit/buildkitd.sock") as client:
        for worker in await client.list_workers():
            print(worker.ID)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import grpc

from buildkitpy.api import (
    control_pb2,
    control_pb2_grpc,
    gateway_pb2_grpc,
    ops_pb2,
    worker_pb2,
)
from buildkitpy.client.rpc_errors import BuildkitError, from_rpc_error

if TYPE_CHECKING:
    from buildkitpy.session.client import SessionDialer

DEFAULT_ADDRESS = "unix:///run/buildkit/buildkitd.sock"
# containerd's defaults, which buildctl and buildkitd use for both directions.
MAX_MESSAGE_SIZE = 16 << 20

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
]


class AddressError(ValueError):
    """An ``--addr`` we cannot dial."""


class UnsupportedAddress(AddressError):
    """A well-formed address of a kind we do not support yet (e.g. ``docker-container://``)."""


@dataclass
class TLSOptions:
    """buildctl's ``--tlscacert/--tlscert/--tlskey/--tlsservername`` (or ``--tlsdir``)."""

    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca_cert or self.cert or self.key)

    @classmethod
    def from_dir(cls, tls_dir: str, server_name: str = "") -> TLSOptions:
        """``--tlsdir``: ca.pem|ca.crt, cert.pem|tls.crt, key.pem|tls.key."""
        def one_of(*names: str) -> str:
            for name in names:
                path = os.path.join(tls_dir, name)
                if os.path.exists(path):
                    return path
            raise AddressError(f"directory did not contain one of the needed files: {' or '.join(names)}")

        return cls(ca_cert=one_of("ca.pem", "ca.crt"), cert=one_of("cert.pem", "tls.crt"),
                   key=one_of("key.pem", "tls.key"), server_name=server_name)


def grpc_target(addr: str) -> tuple[str, str]:
    """(gRPC target, host for TLS name checks) of a buildctl ``--addr``."""
    parts = urlsplit(addr)
    scheme = parts.scheme
    if scheme == "unix":
        path = addr[len("unix://"):]
        if not path:
            raise AddressError(f"invalid address {addr!r}: no socket path")
        return "unix:" + path, "localhost"
    if scheme == "tcp":
        if not parts.hostname or parts.port is None:
            raise AddressError(f"invalid address {addr!r}: expected tcp://host:port")
        host = parts.hostname
        target_host = f"[{host}]" if ":" in host else host
        return f"{target_host}:{parts.port}", host
    if scheme:
        raise UnsupportedAddress(f"address scheme {scheme}:// is not supported yet "
                                 "(use unix:// or tcp://)")
    raise AddressError(f"invalid address {addr!r}: expected unix:///path or tcp://host:port")


def connect(addr: str = DEFAULT_ADDRESS, tls: TLSOptions | None = None) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to the daemon at ``addr`` (``unix:///path`` or ``tcp://host:port``).

    Must be called with an event loop running (grpc.aio binds the channel to it).
    """
    target, host = grpc_target(addr)
    options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(target, options=options)
    root = _read(tls.ca_cert) if tls.ca_cert else None
    cert = _read(tls.cert) if tls.cert else None
    key = _read(tls.key) if tls.key else None
    if bool(cert) != bool(key):
        raise AddressError("both --tlscert and --tlskey are required for a client certificate")
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    server_name = tls.server_name or host
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, creds, options=options)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AddressError(f"failed to read {path}: {exc.strerror or exc}") from exc


StatusCallback = Callable[[control_pb2.StatusResponse], None]


class Client:
    """The daemon's Control (and LLBBridge) services behind plain async methods.

    Failed calls raise :class:`BuildkitError` carrying the daemon's message and typed details.
    """

    def __init__(self, channel: grpc.aio.Channel, *, session_dialer: SessionDialer | None = None) -> None:
        self.channel = channel
        # Where sessions go: Control.Session on the channel, or connections this opens (the
        # Docker Engine's POST /session, see buildkitpy.client.engine).
        self.session_dialer = session_dialer
        self.control = control_pb2_grpc.ControlStub(channel)
        self.gateway = gateway_pb2_grpc.LLBBridgeStub(channel)

    @classmethod
    def connect(cls, addr: str = DEFAULT_ADDRESS, tls: TLSOptions | None = None) -> Client:
        return cls(connect(addr, tls))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait(self, timeout: float | None = None) -> None:
        """Block until the daemon answers ``Info`` (buildctl ``--wait``); retries while unavailable."""
        with anyio.fail_after(timeout):
            delay = 0.05
            while True:
                try:
                    await self.control.Info(control_pb2.InfoRequest())
                    return
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        return
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise from_rpc_error(exc) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def list_workers(self, filters: list[str] | tuple[str, ...] = ()) -> list[worker_pb2.WorkerRecord]:
        try:
            resp = await self.control.ListWorkers(control_pb2.ListWorkersRequest(filter=list(filters)))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return list(resp.record)

    async def info(self) -> worker_pb2.BuildkitVersion:
        try:
            resp = await self.control.Info(control_pb2.InfoRequest())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return resp.buildkitVersion

    async def disk_usage(self, filters: list[str] | tuple[str, ...] = ()) -> list[control_pb2.UsageRecord]:
        try:
            resp = await self.control.DiskUsage(control_pb2.DiskUsageRequest(filter=list(filters)))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return list(resp.record)

    async def prune(self, *, filters: list[str] | tuple[str, ...] = (), all: bool = False,
                    keep_duration_ns: int = 0, reserved_space: int = 0, max_used_space: int = 0,
                    min_free_space: int = 0) -> AsyncIterator[control_pb2.UsageRecord]:
        """The records the daemon removed, as it removes them."""
        request = control_pb2.PruneRequest(
            filter=list(filters), all=all, keepDuration=keep_duration_ns,
            reservedSpace=reserved_space, maxUsedSpace=max_used_space, minFreeSpace=min_free_space)
        call = self.control.Prune(request)
        try:
            async for record in call:
                yield record
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, context="failed to call prune") from None
        finally:
            call.cancel()

    async def build_history(self, *, ref: str = "", active_only: bool = False, early_exit: bool = True,
                            filters: list[str] | tuple[str, ...] = (),
                            limit: int = 0) -> AsyncIterator[control_pb2.BuildHistoryEvent]:
        """``ListenBuildHistory``: active builds, then stored records; live events unless early_exit."""
        call = self.control.ListenBuildHistory(control_pb2.BuildHistoryRequest(
            Ref=ref, ActiveOnly=active_only, EarlyExit=early_exit, Filter=list(filters), Limit=limit))
        try:
            async for event in call:
                yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, context="failed to list build history") from None
        finally:
            call.cancel()

    async def update_build_history(self, ref: str, *, pinned: bool = False, delete: bool = False,
                                   finalize: bool = False) -> None:
        try:
            await self.control.UpdateBuildHistory(control_pb2.UpdateBuildHistoryRequest(
                Ref=ref, Pinned=pinned, Delete=delete, Finalize=finalize))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def solve(self, opt, *, definition: ops_pb2.Definition | None = None,
                    on_status: StatusCallback | None = None):
        """``Control.Solve`` alone (definition or ``opt.frontend``), as non-gateway clients do."""
        from buildkitpy.client.solve import solve

        return await solve(self, opt, definition=definition, on_status=on_status)

    async def build(self, opt, *, definition: ops_pb2.Definition | None = None,
                    on_status: StatusCallback | None = None):
        """buildctl's ``client.Build``: Control.Solve plus the LLBBridge calls of a gateway client."""
        from buildkitpy.client.solve import build

        return await build(self, opt, definition=definition, on_status=on_status)


__all__ = ["Client", "TLSOptions", "connect", "BuildkitError", "AddressError", "UnsupportedAddress",
           "DEFAULT_ADDRESS", "MAX_MESSAGE_SIZE"]
