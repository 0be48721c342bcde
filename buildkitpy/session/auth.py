"""Registry credentials over a session (``moby.filesync.v1.Auth``, the package name is BuildKit's).

The client answers ``Credentials`` from its docker config (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``): ``credHelpers``/``credsStore`` helpers first, then ``auths`` entries
(base64 ``auth``, ``username``/``password``, ``identitytoken``). Unknown hosts get an empty answer
(anonymous access). The token methods (``FetchToken``, ``GetTokenAuthority``,
``VerifyTokenAuthority``) are not offered: they answer UNIMPLEMENTED and are not announced, so the
daemon falls back to ``Credentials`` as BuildKit does.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import grpc

from buildkitpy import errors
from buildkitpy.api import auth_pb2, auth_pb2_grpc
from buildkitpy.session.manager import Session, call_failed

log = logging.getLogger(__name__)

SERVICE = auth_pb2.DESCRIPTOR.services_by_name["Auth"]
CREDENTIALS_METHOD = f"/{SERVICE.full_name}/Credentials"

# Docker Hub is asked for as its registry host but stored under the legacy index URL.
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
HELPER_TIMEOUT = 30.0


class DockerConfigError(ValueError):
    """The docker config file exists but cannot be used."""


def default_docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def load_docker_config(path: Path) -> dict[str, Any]:
    """The parsed config, or ``{}`` if the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise DockerConfigError(f"cannot read docker config {path}: {err}") from err
    try:
        config = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise DockerConfigError(f"docker config {path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise DockerConfigError(f"docker config {path} must hold a JSON object")
    return config


def config_key_for(host: str) -> str:
    return DOCKER_HUB_CONFIG_KEY if host in DOCKER_HUB_HOSTS else host


def hostname_of(config_key: str) -> str:
    """``https://host:5000/v1/`` → ``host:5000`` (how docker matches ``auths`` keys to hosts)."""
    rest = config_key.split("://", 1)[1] if "://" in config_key else config_key
    return rest.split("/", 1)[0]


class AuthAttachable(auth_pb2_grpc.AuthServicer):
    """Client side: registry credentials from a docker config.

    ``config`` (an already-parsed config object) takes precedence over ``config_path``.
    """

    def __init__(self, config_path: Path | str | None = None, *,
                 config: Mapping[str, Any] | None = None) -> None:
        if config is None:
            self.config_path: Path | None = Path(config_path or default_docker_config_path())
            config = load_docker_config(self.config_path)
        else:
            self.config_path = None
        auths = config.get("auths")
        auths = {} if auths is None else auths
        helpers = config.get("credHelpers")
        helpers = {} if helpers is None else helpers
        if not isinstance(auths, dict) or not isinstance(helpers, dict):
            raise DockerConfigError(f"docker config {self.config_path or '(given)'}: 'auths' and "
                                    "'credHelpers' must be JSON objects")
        self._auths: dict[str, Any] = auths
        self._helpers: dict[str, str] = helpers
        self._store = config.get("credsStore") or ""
        if not isinstance(self._store, str):
            raise DockerConfigError(f"docker config {self.config_path or '(given)'}: 'credsStore' "
                                    "must be a string")

    def add_to_server(self, server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServicer_to_server(self, server)

    def method_names(self) -> list[str]:
        return [CREDENTIALS_METHOD]

    async def lookup(self, host: str) -> tuple[str, str]:
        """``(username, secret)`` for ``host``; an identity token comes back as ``("", token)``;
        ``("", "")`` when nothing is configured."""
        key = config_key_for(host)
        username, secret = self._from_auths(key)
        helper = self._helpers.get(key) or self._store
        if helper:
            from_helper = await _run_credential_helper(helper, key)
            if from_helper is not None:
                username, secret = from_helper
        return username, secret

    def _from_auths(self, key: str) -> tuple[str, str]:
        entry = self._auths.get(key)
        if entry is None:
            entry = next((v for k, v in self._auths.items() if hostname_of(k) == key), None)
        if not isinstance(entry, dict):
            return "", ""
        if entry.get("identitytoken"):
            return "", str(entry["identitytoken"])
        username, password = entry.get("username") or "", entry.get("password") or ""
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, TypeError):
                log.warning("docker config: ignoring an undecodable 'auth' for %s", key)
                return username, password
            username, sep, password = decoded.partition(":")
            if not sep:
                log.warning("docker config: ignoring an 'auth' without user:password for %s", key)
                return "", ""
        return username, password

    async def Credentials(self, request: auth_pb2.CredentialsRequest,
                          context: grpc.aio.ServicerContext) -> auth_pb2.CredentialsResponse:
        try:
            username, secret = await self.lookup(request.Host)
        except CredentialHelperError as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        return auth_pb2.CredentialsResponse(Username=username, Secret=secret)


class CredentialHelperError(RuntimeError):
    pass


async def _run_credential_helper(helper: str, key: str) -> tuple[str, str] | None:
    """Ask ``docker-credential-<helper> get``; ``None`` when it has nothing for ``key``."""
    program = f"docker-credential-{helper}"
    try:
        with anyio.fail_after(HELPER_TIMEOUT):
            result = await anyio.run_process([program, "get"], input=key.encode(), check=False,
                                             stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise CredentialHelperError(f"docker credential helper {program} is not installed") from None
    except TimeoutError:
        raise CredentialHelperError(f"{program} did not answer within {HELPER_TIMEOUT:g}s") from None
    output = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0:
        if "credentials not found" in output.lower():
            return None
        raise CredentialHelperError(f"{program} get failed: {output or result.returncode}")
    try:
        answer = json.loads(output)
        username, secret = str(answer.get("Username") or ""), str(answer.get("Secret") or "")
    except (json.JSONDecodeError, AttributeError):
        raise CredentialHelperError(f"{program} get printed something that is not JSON") from None
    if username == "<token>":  # docker's marker for an identity token
        return "", secret
    return username, secret


async def credentials(session: Session, host: str, *, timeout: float | None = 60.0) -> tuple[str, str]:
    """Daemon side: ``(username, secret)`` the client has for registry ``host`` (empty strings for
    anonymous access, also when the session offers no Auth)."""
    if session.closed.is_set():
        raise errors.SessionNotFound(f"cannot get credentials for {host}: session {session.id} is "
                                     f"closed ({session.close_reason})")
    if not session.supports(CREDENTIALS_METHOD):
        return "", ""
    stub = auth_pb2_grpc.AuthStub(session.channel)
    try:
        response = await stub.Credentials(auth_pb2.CredentialsRequest(Host=host), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            return "", ""
        raise call_failed(f"getting credentials for {host} from session {session.id}", err) from None
    return response.Username, response.Secret
