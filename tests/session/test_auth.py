"""Registry credentials from a docker config, served over a real session."""

from __future__ import annotations

import base64
import json
import os
import stat

import grpc
import pytest

from buildkitpy.api import auth_pb2, auth_pb2_grpc
from buildkitpy.session.auth import (
    CREDENTIALS_METHOD,
    AuthAttachable,
    DockerConfigError,
    credentials,
    default_docker_config_path,
)
from buildkitpy.session.client import ClientSession
from buildkitpy.session.manager import SessionCallFailed

pytestmark = pytest.mark.anyio


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONFIG = {
    "auths": {
        "registry.example.com": {"auth": b64("alice:pw:with:colons")},
        "https://index.docker.io/v1/": {"username": "bob", "password": "hub"},
        "https://other.example.com:5000/v1/": {"identitytoken": "tok"},
        "bad.example.com": {"auth": "!!!not base64"},
    },
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    return path


async def test_credentials_over_a_session(daemon, config_file):
    client = ClientSession([AuthAttachable(config_file)])
    assert CREDENTIALS_METHOD in client.method_names()
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        assert await credentials(session, "registry.example.com") == ("alice", "pw:with:colons")
        assert await credentials(session, "registry-1.docker.io") == ("bob", "hub")
        assert await credentials(session, "other.example.com:5000") == ("", "tok")
        assert await credentials(session, "unknown.example.com") == ("", "")
        assert await credentials(session, "bad.example.com") == ("", "")
        # The token methods are not offered: not announced, and UNIMPLEMENTED if called anyway.
        assert not session.supports("/moby.filesync.v1.Auth/FetchToken")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await auth_pb2_grpc.AuthStub(session.channel).GetTokenAuthority(
                auth_pb2.GetTokenAuthorityRequest(Host="registry.example.com"))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_session_without_auth_means_anonymous(daemon):
    client = ClientSession()
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        assert await credentials(session, "registry.example.com") == ("", "")


def write_helper(bin_dir, name: str, script: str) -> None:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


async def test_credential_helpers(daemon, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    write_helper(bin_dir, "pass", '[ "$1" = get ] || exit 2\nread host\n'
                 'if [ "$host" = helped.example.com ]; then '
                 'echo \'{"ServerURL":"helped.example.com","Username":"carol","Secret":"fromhelper"}\'; '
                 'elif [ "$host" = token.example.com ]; then '
                 'echo \'{"Username":"<token>","Secret":"idtok"}\'; '
                 'else echo "credentials not found in native keychain"; exit 1; fi\n')
    config = {"credsStore": "pass",
              "credHelpers": {"broken.example.com": "notinstalled"},
              "auths": {"fileonly.example.com": {"auth": b64("dave:filepw")}}}
    client = ClientSession([AuthAttachable(config=config)])
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        assert await credentials(session, "helped.example.com") == ("carol", "fromhelper")
        assert await credentials(session, "token.example.com") == ("", "idtok")
        # The helper has nothing: fall back to the file, then to anonymous.
        assert await credentials(session, "fileonly.example.com") == ("dave", "filepw")
        assert await credentials(session, "nobody.example.com") == ("", "")
        with pytest.raises(SessionCallFailed, match="docker-credential-notinstalled is not installed"):
            await credentials(session, "broken.example.com")


def test_config_file_errors(tmp_path, monkeypatch):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DockerConfigError, match=f"{broken} is not valid JSON"):
        AuthAttachable(broken)
    broken.write_text('{"auths": []}')
    with pytest.raises(DockerConfigError, match="'auths'"):
        AuthAttachable(broken)
    AuthAttachable(tmp_path / "missing.json")  # no config at all is fine

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    assert default_docker_config_path() == tmp_path / "dockercfg" / "config.json"


async def test_lookup_without_a_session(config_file):
    attachable = AuthAttachable(config_file)
    assert await attachable.lookup("docker.io") == ("bob", "hub")
    assert await attachable.lookup("registry.example.com") == ("alice", "pw:with:colons")
