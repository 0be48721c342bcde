"""What one build used, for its provenance (BuildKit's ``provenance.Capture``).

The control service opens a ``BuildCapture`` per Solve and registers it with the daemon's
``ProvenanceCollector``; the solver's observer reports every settled vertex to the collector
(``step_settled``), which notes the vertex's sources with their pins (image manifest digest, HTTP
content digest, git commit), local names, secrets, SSH ids and network use; the frontend's image
resolutions (``FROM``) are noted by the gateway bridge (``image_resolved``). ``capture_for`` then
puts together one result ref's capture: the steps of its definition plus every step of the build
that belongs to no result ref (the Dockerfile's own load, for instance), as BuildKit merges them.
"""

from __future__ import annotations

import hashlib
import secrets as _secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from buildkitpy.api import ops_pb2


@dataclass(frozen=True)
class ImageSource:
    ref: str  # normalised reference (name:tag, or name[:tag]@digest)
    platform: tuple[str, str, str] | None  # (os, architecture, variant)
    digest: str
    local: bool = False


@dataclass(frozen=True)
class HTTPSource:
    url: str
    digest: str


@dataclass(frozen=True)
class GitSource:
    url: str
    commit: str


@dataclass(frozen=True)
class Secret:
    id: str
    optional: bool = False


@dataclass
class StepCapture:
    """One vertex's contribution."""

    images: list[ImageSource] = field(default_factory=list)
    http: list[HTTPSource] = field(default_factory=list)
    git: list[GitSource] = field(default_factory=list)
    locals: list[str] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    ssh: list[Secret] = field(default_factory=list)
    network: bool = False
    incomplete: bool = False
    # Per output: the snapshot's layer directories, lowest first (to find its exported layers).
    layer_chains: list[list[str]] = field(default_factory=list)


@dataclass
class Capture:
    """A result ref's capture, deduplicated and sorted as BuildKit's."""

    images: list[ImageSource] = field(default_factory=list)
    http: list[HTTPSource] = field(default_factory=list)
    git: list[GitSource] = field(default_factory=list)
    locals: list[str] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    ssh: list[Secret] = field(default_factory=list)
    network: bool = False
    incomplete: bool = False

    def merge(self, step: StepCapture) -> None:
        for img in step.images:
            self.add_image(img)
        for h in step.http:
            if all(x.url != h.url for x in self.http):
                self.http.append(h)
        for g in step.git:
            if all(x.url != g.url for x in self.git):
                self.git.append(g)
        for name in step.locals:
            if name not in self.locals:
                self.locals.append(name)
        self.secrets = _add_secrets(self.secrets, step.secrets)
        self.ssh = _add_secrets(self.ssh, step.ssh)
        self.network |= step.network
        self.incomplete |= step.incomplete

    def add_image(self, img: ImageSource) -> None:
        for have in self.images:
            if have.ref == img.ref and have.local == img.local and have.platform == img.platform:
                return
        self.images.append(img)

    def finish(self) -> None:
        """Drop pinned image refs also present by name (the frontend resolved them), then sort."""
        by_name = {_name_tag(i.ref) for i in self.images if "@" not in i.ref}
        self.images = [i for i in self.images if "@" not in i.ref or _name_tag(i.ref) not in by_name]
        self.images.sort(key=lambda i: i.ref)
        self.http.sort(key=lambda h: h.url)
        self.git.sort(key=lambda g: g.url)
        self.locals.sort()
        self.secrets.sort(key=lambda s: s.id)
        self.ssh.sort(key=lambda s: s.id)


def _add_secrets(have: list[Secret], new: list[Secret]) -> list[Secret]:
    out = list(have)
    for s in new:
        for i, v in enumerate(out):
            if v.id == s.id:
                if not s.optional:
                    out[i] = Secret(v.id, False)
                break
        else:
            out.append(s)
    return out


def _name_tag(ref: str) -> str:
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


_ID_CHARS = string.digits + string.ascii_lowercase


def new_invocation_id() -> str:
    """A random 25-character id like BuildKit's ``identity.NewID`` (a job's unique id)."""
    n = int.from_bytes(_secrets.token_bytes(16), "big")
    out = []
    for _ in range(25):
        n, r = divmod(n, 36)
        out.append(_ID_CHARS[r])
    return "".join(out)


@dataclass
class BuildCapture:
    """Everything one build's solves touched (filled while it runs)."""

    ref: str
    started: float = field(default_factory=time.time)
    invocation_id: str = field(default_factory=new_invocation_id)
    steps: dict[str, StepCapture] = field(default_factory=dict)
    resolved: list[ImageSource] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def image_resolved(self, ref: str, platform: Any, digest: str) -> None:
        """The frontend resolved image ``ref`` (for ``platform``, a ``llb.platform.Platform`` or
        None) to manifest ``digest``."""
        from buildkitpy.image.reference import parse_reference

        try:
            name = str(parse_reference(ref))
        except Exception:  # noqa: BLE001 - the resolution itself would have failed
            return
        p = (platform.os, platform.architecture, platform.variant or "") if platform is not None else None
        with self.lock:
            self.resolved.append(ImageSource(name, p, digest))

    def capture_for(self, definition: ops_pb2.Definition | None, others: list[ops_pb2.Definition],
                    platforms: list[tuple[str, tuple[str, str, str]]] | None = None,
                    current: str | None = None) -> Capture:
        """The capture of the result ref with ``definition``; ``others`` are the build's other
        result refs (their steps are left out unless also in ``definition``). For a multi-platform
        result (``platforms``: (ref key, platform), ``current`` this ref's key), an image the
        frontend resolved for every platform is listed only for its own platform (BuildKit's
        ``filterImagePlatforms``)."""
        mine = _digests(definition)
        theirs: set[str] = set()
        for d in others:
            theirs |= _digests(d)
        out = Capture()
        with self.lock:
            for digest, step in self.steps.items():
                if digest in mine or digest not in theirs:
                    out.merge(step)
            resolved = list(self.resolved)
        for img in _filter_platforms(resolved, platforms, current):
            out.add_image(img)
        out.finish()
        return out


def _matches(want: tuple[str, str, str], have: tuple[str, str, str]) -> bool:
    return want[0] == have[0] and want[1] == have[1] and (not want[2] or want[2] == have[2])


def _filter_platforms(images: list[ImageSource], platforms: list[tuple[str, tuple[str, str, str]]] | None,
                      current: str | None) -> list[ImageSource]:
    if not platforms:
        return images
    everywhere = set()
    for img in images:
        if all(any(i.ref == img.ref and i.platform is not None and _matches(p, i.platform) for i in images)
               for _, p in platforms):
            everywhere.add(img.ref)
    mine = next((p for k, p in platforms if k == current), ("", "", ""))
    return [img for img in images
            if img.ref not in everywhere or img.platform is None
            or (img.platform[0], img.platform[1]) == (mine[0], mine[1])]


def layer_descriptors(capture: BuildCapture, exported: list[tuple[str, dict[str, Any]]],
                      ) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(vertex digest, output) → the exported layer descriptors of that output: every step whose
    result is a prefix of the exported image's layer chain (BuildKit lists the layer blobs each
    step's result has)."""
    paths = [p for p, _ in exported]
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with capture.lock:
        for digest, step in capture.steps.items():
            for i, chain in enumerate(step.layer_chains):
                if chain and chain == paths[:len(chain)]:
                    out[(digest, i)] = [d for _, d in exported[:len(chain)]]
    return out


def known_layer_descriptors(capture: BuildCapture,
                            lookup: Any) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(vertex digest, output) → layer descriptors, for the steps whose every layer already has a
    blob (``lookup(layer directory)`` → descriptor or None; e.g. pulled base image layers), as
    BuildKit lists the layer blobs a step's result has without an export (blocking)."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with capture.lock:
        chains = [(d, i, chain) for d, step in capture.steps.items()
                  for i, chain in enumerate(step.layer_chains)]
    seen: dict[Any, dict[str, Any] | None] = {}  # steps share most of their chains' layers

    def known(path: Any) -> dict[str, Any] | None:
        if path not in seen:
            seen[path] = lookup(path)
        return seen[path]
    for digest, i, chain in chains:
        descs = [d for p in chain if (d := known(p)) is not None] if chain else []
        if descs and len(descs) == len(chain):  # every layer of the chain is known
            out[(digest, i)] = descs
    return out


def _digests(definition: ops_pb2.Definition | None) -> set[str]:
    if definition is None:
        return set()
    return {"sha256:" + hashlib.sha256(dt).hexdigest() for dt in getattr(definition, "def")}


def _platform(op: ops_pb2.Op) -> tuple[str, str, str] | None:
    if not op.HasField("platform"):
        return None
    p = op.platform
    return (p.OS, p.Architecture, p.Variant)


def step_capture(vertex: Any, op_impl: Any) -> StepCapture:
    """What one settled vertex contributes (``op_impl`` is the solver's op object, for pins)."""
    from buildkitpy.image.reference import parse_reference

    op: ops_pb2.Op = vertex.op
    out = StepCapture()
    kind = op.WhichOneof("op")
    if kind == "source":
        ident = op.source.identifier
        scheme, _, rest = ident.partition("://")
        if scheme == "docker-image":
            try:
                ref = parse_reference(rest)
            except Exception:  # noqa: BLE001 - an unparsable ref failed the build already
                return out
            resolved = getattr(op_impl, "resolved", None)
            digest = ref.digest or getattr(resolved, "digest", "") or ""
            out.images.append(ImageSource(str(ref), _platform(op), digest))
        elif scheme == "oci-layout":
            out.images.append(ImageSource(rest, _platform(op), rest.partition("@")[2], local=True))
        elif scheme in ("http", "https"):
            resolved = getattr(op_impl, "resolved", None)
            digest = getattr(resolved, "digest", "") or getattr(op_impl, "checksum", "") or ""
            if digest:
                out.http.append(HTTPSource(ident, digest))
            else:
                out.incomplete = True
        elif scheme == "git":
            remote = getattr(op_impl, "remote", "") or rest
            git_ref = getattr(op_impl, "ref", "")
            commit = getattr(op_impl, "key_commit", "") or getattr(op_impl, "commit", "")
            out.git.append(GitSource(remote + (f"#{git_ref}" if git_ref else ""), commit))
            for attr in ("auth_token_secret", "auth_header_secret"):
                sid = getattr(op_impl, attr, "")
                if sid:
                    out.secrets.append(Secret(sid, True))
        elif scheme == "local":
            out.locals.append(rest)
    elif kind == "exec":
        ex = op.exec
        for m in ex.mounts:
            if m.mountType == ops_pb2.MountType.SECRET:
                out.secrets.append(Secret(m.secretOpt.ID, m.secretOpt.optional))
            elif m.mountType == ops_pb2.MountType.SSH:
                out.ssh.append(Secret(m.SSHOpt.ID or "default", m.SSHOpt.optional))
        for se in ex.secretenv:
            out.secrets.append(Secret(se.ID, se.optional))
        if ex.network != ops_pb2.NetMode.NONE:
            out.network = True
    elif kind == "build":
        out.incomplete = True
    return out


class ProvenanceCollector:
    """Daemon-wide: the captures of the builds running now, by build ref."""

    def __init__(self) -> None:
        self._builds: dict[str, BuildCapture] = {}
        self._lock = threading.Lock()

    def begin(self, ref: str) -> BuildCapture:
        capture = BuildCapture(ref)
        with self._lock:
            self._builds[ref] = capture
        return capture

    def end(self, ref: str) -> None:
        with self._lock:
            self._builds.pop(ref, None)

    def watching(self, build_ref: str) -> bool:
        with self._lock:
            return build_ref in self._builds

    def step_settled(self, build_ref: str, vertex: Any, op_impl: Any, outputs: list | None = None) -> None:
        """Note one settled vertex (blocking: reads its outputs' layer chains)."""
        with self._lock:
            capture = self._builds.get(build_ref)
        if capture is None:
            return
        step = step_capture(vertex, op_impl)
        for snap in outputs or []:
            try:
                step.layer_chains.append(snap.layer_dirs() if snap is not None else [])
            except Exception:  # noqa: BLE001 - a chain we cannot read just lists no layers
                step.layer_chains.append([])
        with capture.lock:
            for digest in {vertex.digest, getattr(vertex, "original_digest", "") or vertex.digest}:
                capture.steps[digest] = step
