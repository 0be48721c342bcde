"""Address and TLS option handling of ``connect``."""

from __future__ import annotations

import pytest

from buildkitpy.client.connection import AddressError, TLSOptions, UnsupportedAddress, grpc_target


def test_addresses():
    assert grpc_target("unix:///run/buildkit/buildkitd.sock") == ("unix:/run/buildkit/buildkitd.sock",
                                                                  "localhost")
    assert grpc_target("tcp://127.0.0.1:1234") == ("127.0.0.1:1234", "127.0.0.1")
    assert grpc_target("tcp://[::1]:1234") == ("[::1]:1234", "::1")
    assert grpc_target("tcp://buildkitd.example:1234") == ("buildkitd.example:1234", "buildkitd.example")


@pytest.mark.parametrize("addr,error", [
    ("tcp://host", AddressError), ("unix://", AddressError), ("/run/x.sock", AddressError),
    ("docker-container://buildkitd", UnsupportedAddress), ("ssh://me@host", UnsupportedAddress),
])
def test_bad_addresses(addr, error):
    with pytest.raises(error):
        grpc_target(addr)


def test_tls_dir(tmp_path):
    with pytest.raises(AddressError, match="ca.pem or ca.crt"):
        TLSOptions.from_dir(str(tmp_path))
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    tls = TLSOptions.from_dir(str(tmp_path), "buildkitd")
    assert (tls.ca_cert, tls.cert, tls.key, tls.server_name, tls.enabled) == (
        f"{tmp_path}/ca.crt", f"{tmp_path}/tls.crt", f"{tmp_path}/tls.key", "buildkitd", True)
    assert not TLSOptions().enabled
