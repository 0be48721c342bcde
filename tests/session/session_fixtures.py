"""Helpers shared by the session tests (a module with a unique name: tests/ is not a package)."""

from __future__ import annotations

import grpc

ECHO_SERVICE = "buildkitpy.test.Echo"
ECHO_UNARY = f"/{ECHO_SERVICE}/Echo"
ECHO_STREAM = f"/{ECHO_SERVICE}/EchoStream"


class EchoAttachable:
    """A raw-bytes attachable: Echo returns the request; EchoStream returns each chunk it gets."""

    def add_to_server(self, server: grpc.aio.Server) -> None:
        async def echo(request: bytes, context) -> bytes:
            return request

        async def echo_stream(request_iterator, context):
            async for chunk in request_iterator:
                yield chunk

        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(ECHO_SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "EchoStream": grpc.stream_stream_rpc_method_handler(echo_stream),
        })])

    def method_names(self) -> list[str]:
        return [ECHO_UNARY, ECHO_STREAM]
