"""Registry transport failures in words: an unknown host, a closed port, a port that speaks
HTTP/2 frames (a gRPC server) instead of HTTP/1.1; never an errno number or raw protocol bytes."""

from __future__ import annotations

import socket
import threading

import anyio
import pytest

from buildkitpy.image.reference import parse_reference
from buildkitpy.image.registry import RegistryClient, RegistryError


def _fails_with(ref: str, registries: dict) -> str:
    client = RegistryClient(registries, timeout=10)

    async def go() -> None:
        await client.get_manifest(parse_reference(ref))

    with pytest.raises(RegistryError) as info:
        anyio.run(go)
    return str(info.value)


def test_unknown_host():
    text = _fails_with("nosuchhost.invalid/x/y:1", {})
    assert "failed to resolve host nosuchhost.invalid" in text, text
    assert "Errno" not in text


def test_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"127.0.0.1:{port}"
    text = _fails_with(f"{host}/x/y:1", {host: {"http": True}})
    assert f"failed to connect to {host}: connection refused" in text, text
    assert "Errno" not in text


def test_a_port_speaking_http2_frames():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    host = f"127.0.0.1:{server.getsockname()[1]}"

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            # what a gRPC server answers to HTTP/1.1: SETTINGS, then GOAWAY (PROTOCOL_ERROR), close
            conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"
                         b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01")

    threading.Thread(target=answer, daemon=True).start()
    try:
        text = _fails_with(f"{host}/x/y:1", {host: {"http": True}})
    finally:
        server.close()
    assert f"{host} did not answer with HTTP/1.1" in text, text
    assert "\\x00" not in text and "\x00" not in text
