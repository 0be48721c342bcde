"""Build secrets over a session (``moby.buildkit.secrets.v1.Secrets``).

The client serves its secrets with :class:`SecretsAttachable`; the daemon fetches one with
:func:`get_secret` when an exec mounts it.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from buildkitpy import errors
from buildkitpy.api import secrets_pb2, secrets_pb2_grpc
from buildkitpy.session.manager import Session, call_failed, service_method_names

SERVICE = secrets_pb2.DESCRIPTOR.services_by_name["Secrets"]
GET_SECRET_METHOD = f"/{SERVICE.full_name}/GetSecret"
# Like BuildKit's client, refuse to hand out anything bigger.
MAX_SECRET_SIZE = 500 * 1024


class SecretNotFound(errors.NotFound):
    """The secret is not available from the session (optional secret mounts skip on this)."""


class SecretsNotServed(SecretNotFound):
    """The session serves no secrets at all (the client was given none)."""


class SecretsAttachable(secrets_pb2_grpc.SecretsServicer):
    """Client side: serve a fixed set of secrets by id."""

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        for secret_id, data in secrets.items():
            if not isinstance(secret_id, str) or not secret_id:
                raise ValueError(f"secret ids must be non-empty strings, got {secret_id!r}")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"secret {secret_id!r} must be bytes, got {type(data).__name__}")
            if len(data) > MAX_SECRET_SIZE:
                raise ValueError(f"secret {secret_id!r} is {len(data)} bytes; the limit is "
                                 f"{MAX_SECRET_SIZE}")
        self._secrets = {k: bytes(v) for k, v in secrets.items()}

    def add_to_server(self, server: grpc.aio.Server) -> None:
        secrets_pb2_grpc.add_SecretsServicer_to_server(self, server)

    def method_names(self) -> list[str]:
        return service_method_names(SERVICE)

    async def GetSecret(self, request: secrets_pb2.GetSecretRequest,
                        context: grpc.aio.ServicerContext) -> secrets_pb2.GetSecretResponse:
        data = self._secrets.get(request.ID)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"secret {request.ID} not found")
        return secrets_pb2.GetSecretResponse(data=data)


async def get_secret(session: Session | grpc.aio.Channel, secret_id: str, *,
                     timeout: float | None = 60.0) -> bytes:
    """Daemon side: the secret ``secret_id`` from the client's session.

    ``session`` may also be a bare channel to the client (then whether it serves secrets is only
    known from the call's answer). Raises :class:`SecretNotFound` (or its subclass
    :class:`SecretsNotServed`), :class:`errors.SessionNotFound` for a closed session, and
    :class:`~buildkitpy.session.manager.SessionCallFailed` for other failures.
    """
    where = "the session"
    if isinstance(session, Session):
        where = f"session {session.id}"
        if session.closed.is_set():
            raise errors.SessionNotFound(f"cannot get secret {secret_id}: {where} is closed "
                                         f"({session.close_reason})")
        if not session.supports(GET_SECRET_METHOD):
            raise SecretsNotServed(f"secret {secret_id} not found: {where} serves no secrets")
        channel = session.channel
    else:
        channel = session
    stub = secrets_pb2_grpc.SecretsStub(channel)
    try:
        response = await stub.GetSecret(secrets_pb2.GetSecretRequest(ID=secret_id), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            raise SecretNotFound(f"secret {secret_id} not found in {where}") from None
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise SecretsNotServed(f"secret {secret_id} not found: {where} serves no secrets") from None
        raise call_failed(f"getting secret {secret_id} from {where}", err) from None
    return response.data
