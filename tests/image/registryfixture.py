"""A real Debian ``docker-registry`` on loopback, and test images we build and upload ourselves."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@dataclass
class Registry:
    proc: subprocess.Popen
    port: int
    data: Path
    auth: tuple[str, str] | None = None
    pushed: dict[str, str] = field(default_factory=dict)  # "repo:tag" -> manifest digest

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.host}"

    def _request(self, url: str, method: str, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> urllib.request.Request:
        req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return req

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        with urllib.request.urlopen(self._request(f"{self.base}/v2/{repo}/blobs/uploads/", "POST", b"")) as r:
            location = r.headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        urllib.request.urlopen(self._request(f"{location}{sep}digest={digest}", "PUT", data,
                                             {"Content-Type": "application/octet-stream"})).close()
        return digest

    def push_manifest(self, repo: str, ref: str, doc: dict) -> str:
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        urllib.request.urlopen(self._request(f"{self.base}/v2/{repo}/manifests/{ref}", "PUT", body,
                                             {"Content-Type": doc["mediaType"]})).close()
        digest = sha256(body)
        self.pushed[f"{repo}:{ref}"] = digest
        return digest

    def push_image(self, repo: str, tag: str, layers: list[tuple[bytes, str]],
                   arch: str = "amd64", variant: str = "", docker_types: bool = False,
                   config: dict | None = None) -> tuple[str, dict]:
        """Push (uncompressed tar, compression) layers as one image; returns (digest, descriptor).
        ``config`` replaces the image config's ``config`` (default: PATH=/bin, Cmd sh)."""
        descs, diff_ids = [], []
        for tar_bytes, compression in layers:
            diff_ids.append(sha256(tar_bytes))
            if compression == "gzip":
                blob = gzip.compress(tar_bytes, mtime=0)
                mt = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker_types
                      else "application/vnd.oci.image.layer.v1.tar+gzip")
            elif compression == "zstd":
                blob = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes, capture_output=True,
                                      check=True).stdout
                mt = "application/vnd.oci.image.layer.v1.tar+zstd"
            else:
                blob, mt = tar_bytes, "application/vnd.oci.image.layer.v1.tar"
            descs.append({"mediaType": mt, "digest": self.push_blob(repo, blob), "size": len(blob)})
        image = {"architecture": arch, "os": "linux",
                 "config": config if config is not None else {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                 "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        if variant:
            image["variant"] = variant
        config_bytes = json.dumps(image, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": ("application/vnd.docker.distribution.manifest.v2+json" if docker_types
                          else "application/vnd.oci.image.manifest.v1+json"),
            "config": {"mediaType": ("application/vnd.docker.container.image.v1+json" if docker_types
                                     else "application/vnd.oci.image.config.v1+json"),
                       "digest": self.push_blob(repo, config_bytes), "size": len(config_bytes)},
            "layers": descs,
        }
        digest = self.push_manifest(repo, tag, manifest)
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        return digest, {"mediaType": manifest["mediaType"], "digest": digest, "size": len(body),
                        "platform": platform}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_registry(data: Path, *, auth: tuple[str, str] | None = None) -> Registry:
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth_cfg = ""
    if auth:
        (data / "htpasswd").write_text(f"{auth[0]}:{bcrypt_hash(auth[1])}\n")
        auth_cfg = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {data / 'htpasswd'}\n"
    (data / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {data / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth_cfg}")
    log = open(data / "registry.log", "ab")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(data / "config.yml")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    reg = Registry(proc, port, data, auth)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{reg.base}/v2/").close()
            return reg
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return reg
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    reg.stop()
    raise RuntimeError(f"docker-registry did not start: {(data / 'registry.log').read_text()[-2000:]}")


# ---------------------------------------------------------------- layer tars built by the tests


class TarBuilder:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, data: bytes = b"",
            link: str = "", uid: int = 0, gid: int = 0, mtime: int = 1_000_000,
            xattrs: dict[str, str] | None = None, dev: tuple[int, int] = (0, 0)) -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, mtime, uid, gid
        info.linkname = link
        info.devmajor, info.devminor = dev
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        self.tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        return self

    def dir(self, name: str, mode: int = 0o755, **kw) -> TarBuilder:
        return self.add(name, tarfile.DIRTYPE, mode, **kw)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def busybox_rootfs() -> bytes:
    t = TarBuilder()
    for d in ("bin", "etc", "tmp", "data", "opq", "opq/sub"):
        t.dir(d, mode=0o1777 if d == "tmp" else 0o755)
    t.add("bin/busybox", mode=0o755, data=BUSYBOX.read_bytes())
    for applet in ("sh", "ls", "cat", "echo"):
        t.add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    t.add("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
    t.add("data/keep", data=b"keep\n")
    t.add("data/gone", data=b"gone\n")
    t.add("opq/a", data=b"a\n")
    t.add("opq/sub/b", data=b"b\n")
    return t.bytes()


def second_layer() -> bytes:
    """Deletes data/gone, makes opq/ opaque (keeping only its new c), adds special files."""
    t = TarBuilder()
    t.dir("data")
    t.add("data/.wh.gone")
    t.dir("opq", mode=0o750)
    t.add("opq/.wh..wh..opq")
    t.add("opq/c", data=b"c\n")
    t.add("data/new", data=b"new\n", uid=1000, gid=1000, mode=0o600, xattrs={"user.note": "hello"})
    t.add("data/link-to-new", tarfile.LNKTYPE, link="data/new")
    t.add("data/sym", tarfile.SYMTYPE, 0o777, link="../etc/passwd")
    t.add("data/fifo", tarfile.FIFOTYPE, 0o644)
    t.add("data/null", tarfile.CHRTYPE, 0o666, dev=(1, 3))
    t.add("data/setuid", mode=0o4755, data=b"#!/bin/sh\n")
    return t.bytes()


def third_layer() -> bytes:
    t = TarBuilder()
    t.dir("data")
    t.add("data/zstd", data=b"zstd layer\n")
    return t.bytes()
