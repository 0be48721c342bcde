"""Serving some of another session's methods from a session of our own, by forwarding each call.

The Engine API's BuildKit builder solves with one session, yet the request may name two: a client's
session (secrets, SSH agents, registry auth) and a context the daemon unpacked from the request
body and serves itself. Like moby, which reads such a context over HTTP and the rest over the
client's session, our own session serves the context and passes every other call through to the
client. Calls are forwarded as raw bytes (no message types needed): on the wire a unary call is a
stream of one message each way, so every method is relayed as a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from buildkitpy.session.manager import HEALTH_CHECK_METHOD, HEALTH_WATCH_METHOD, Session

# Call metadata that belongs to the hop, not to the call.
_HOP_HEADERS = ("user-agent", "content-type", "te", "host")


class ForwardingAttachable:
    """Serves ``methods`` by calling the same methods of ``session`` (a session the daemon holds)."""

    def __init__(self, session: Session, methods: Iterable[str]) -> None:
        skip = {HEALTH_CHECK_METHOD.lower(), HEALTH_WATCH_METHOD.lower()}
        self.session = session
        self.methods = [m for m in dict.fromkeys(methods) if m.lower() not in skip]

    def method_names(self) -> list[str]:
        return list(self.methods)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((_Forwarder(self.session, self.methods),))


class _Forwarder(grpc.GenericRpcHandler):
    def __init__(self, session: Session, methods: list[str]) -> None:
        self.session = session
        self.methods = set(methods)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method  # type: ignore[attr-defined]
        if method not in self.methods:
            return None
        session = self.session

        async def relay(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[bytes]:
            if session.closed.is_set():
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"the client's session {session.id} has ended")
            metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                        if not k.startswith((":", "grpc-")) and k not in _HOP_HEADERS]
            call: Any = session.channel.stream_stream(method)(requests, metadata=metadata)
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "")
            finally:
                call.cancel()

        return grpc.stream_stream_rpc_method_handler(relay)


__all__ = ["ForwardingAttachable"]
