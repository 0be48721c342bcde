"""``buildkitpy dial-stdio``: proxy standard input and output to the daemon's unix socket.

buildx's docker-container and kubernetes drivers run ``buildctl dial-stdio`` inside the daemon's
container or pod and speak gRPC over that process's stdio; this is the same command. Like
buildctl's, it accepts only ``unix://`` addresses, half-closes the socket when standard input ends
and returns as soon as the daemon closes its side (a terminal never closes standard input).
"""

from __future__ import annotations

import os
import socket
import threading

from buildkitpy.client.connection import AddressError

CHUNK = 256 << 10


def dial(addr: str, timeout: float) -> socket.socket:
    scheme, sep, path = addr.partition("://")
    if not sep:
        raise AddressError(f"invalid address {addr}")
    if scheme != "unix":
        raise AddressError(f"invalid address {addr} (expected unix://, got {scheme}://)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise AddressError(f"cannot connect to {addr}: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


def proxy(sock: socket.socket, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Copy ``stdin_fd`` to ``sock`` and ``sock`` to ``stdout_fd`` until the daemon's side ends."""

    def stdin_to_socket() -> None:
        try:
            while data := os.read(stdin_fd, CHUNK):
                sock.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    threading.Thread(target=stdin_to_socket, name="stdin to stream", daemon=True).start()
    try:
        while data := sock.recv(CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(stdout_fd, view):]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client at the other end of stdio went away: nothing left to proxy
    finally:
        sock.close()


def dial_stdio(addr: str, timeout: float) -> None:
    proxy(dial(addr, timeout))
