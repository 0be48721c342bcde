"""Why a DiffCopy transfer failed: the peer broke the protocol, the peer aborted, or we could not apply."""

from __future__ import annotations

import grpc

from buildkitpy.errors import BuildkitpyError, InvalidArgument


class DiffCopyError(InvalidArgument):
    """The peer sent something the protocol does not allow (names the entry and the reason)."""


class RemoteError(BuildkitpyError):
    """The peer aborted the transfer with an ERR packet."""

    grpc_code = grpc.StatusCode.UNKNOWN


class ApplyError(BuildkitpyError):
    """A valid entry could not be written to the destination (names the entry and the OS error)."""

    grpc_code = grpc.StatusCode.INTERNAL
