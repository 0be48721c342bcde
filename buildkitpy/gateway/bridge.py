"""The frontend-facing build API of one job (what BuildKit calls the LLB bridge).

Frontends, whether they run in-process (``dockerfile.v0``) or talk gRPC (``LLBBridge``, used by
buildctl's client-side builds and by frontend images), see the same operations: solve a definition
or another frontend into result refs, read files from those refs, evaluate them, warn, and finally
return a result. Refs are lazy: solving happens when something needs the contents.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import stat as statmod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.api import fsutil_stat_pb2, gateway_pb2, ops_pb2
from buildkitpy.errors import InvalidArgument, NotFound, Unimplemented
from buildkitpy.snapshot.api import ImmutableSnapshot

Frontend = Callable[["GatewayBridge", dict[str, str], dict[str, ops_pb2.Definition]],
                    Awaitable["FrontendResult"]]

# In-process frontends by name (``dockerfile.v0`` registers itself here).
FRONTENDS: dict[str, Frontend] = {}


@dataclass
class ResultRef:
    id: str
    definition: ops_pb2.Definition
    snapshot: ImmutableSnapshot | None = None  # set once evaluated
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cache_keys: list[Any] = field(default_factory=list)  # the solver's keys of the result (cache export)
    # The frontend request (name, options) whose solve returned this ref, for its provenance.
    request: tuple[str, dict[str, str]] | None = None


# gateway.proto's AttestationKind and InTotoSubjectKind
ATTESTATION_INTOTO = 0
ATTESTATION_BUNDLE = 1
SUBJECT_SELF = 0
SUBJECT_RAW = 1


@dataclass
class InTotoSubject:
    kind: int = SUBJECT_SELF  # SELF: the exported image manifest; RAW: ``name`` with ``digests``
    name: str = ""
    digests: list[str] = field(default_factory=list)


@dataclass
class Attestation:
    """One attestation a frontend attaches to a result ref (gateway.proto's ``Attestation``):
    an in-toto predicate in a file of ``ref`` at ``path`` (kind INTOTO), or a directory of in-toto
    statements (kind BUNDLE, e.g. what an SBOM scanner wrote)."""

    kind: int = ATTESTATION_INTOTO
    ref: ResultRef | None = None
    path: str = ""
    predicate_type: str = ""
    metadata: dict[str, bytes] = field(default_factory=dict)
    subjects: list[InTotoSubject] = field(default_factory=list)


@dataclass
class FrontendResult:
    ref: ResultRef | None = None
    refs: dict[str, ResultRef | None] | None = None
    metadata: dict[str, bytes] = field(default_factory=dict)
    # Result key (the platform id of ``refs.platforms``, or the platform of a single ref) →
    # what the frontend attached to that result.
    attestations: dict[str, list[Attestation]] = field(default_factory=dict)

    def all_refs(self) -> list[ResultRef]:
        if self.refs is not None:
            return [r for r in self.refs.values() if r is not None]
        return [self.ref] if self.ref is not None else []

    def attestation_refs(self) -> list[ResultRef]:
        return [a.ref for atts in self.attestations.values() for a in atts if a.ref is not None]

    def attestations_for(self, key: str | None, platform_id: str = "") -> list[Attestation]:
        """The attestations of result ``key`` (None: the single ref, whose attestations are kept
        under its platform id, or under the only key there is)."""
        if key is not None:
            return list(self.attestations.get(key, ()))
        if platform_id in self.attestations:
            return list(self.attestations[platform_id])
        if len(self.attestations) == 1:
            return list(next(iter(self.attestations.values())))
        return []


def attestations_to_pb(result: FrontendResult, out: gateway_pb2.Result) -> None:
    """Copy ``result.attestations`` into the ``attestations`` map of ``out``."""
    for key, atts in result.attestations.items():
        entry = out.attestations[key]
        for a in atts:
            pb = entry.attestation.add(kind=a.kind, path=a.path, inTotoPredicateType=a.predicate_type)
            for k, v in a.metadata.items():
                pb.metadata[k] = v
            if a.ref is not None:
                pb.ref.CopyFrom(gateway_pb2.Ref(id=a.ref.id, **{"def": a.ref.definition}))
            for s in a.subjects:
                pb.inTotoSubjects.add(kind=s.kind, name=s.name, digest=list(s.digests))


def attestations_from_pb(pb: gateway_pb2.Result,
                         ref: Callable[[gateway_pb2.Ref], ResultRef | None]) -> dict[str, list[Attestation]]:
    """The ``attestations`` map of ``pb`` (``ref`` turns a ``Ref`` into a result ref)."""
    out: dict[str, list[Attestation]] = {}
    for key, entry in pb.attestations.items():
        atts = []
        for a in entry.attestation:
            if a.kind not in (ATTESTATION_INTOTO, ATTESTATION_BUNDLE):
                raise InvalidArgument(f"unknown attestation kind {a.kind}")
            subjects = []
            for s in a.inTotoSubjects:
                if s.kind not in (SUBJECT_SELF, SUBJECT_RAW):
                    raise InvalidArgument(f"unknown in-toto subject kind {s.kind}")
                subjects.append(InTotoSubject(s.kind, s.name, list(s.digest)))
            atts.append(Attestation(kind=a.kind, ref=ref(a.ref) if a.HasField("ref") else None, path=a.path,
                                    predicate_type=a.inTotoPredicateType, metadata=dict(a.metadata),
                                    subjects=subjects))
        out[key] = atts
    return out


class GatewayBridge:
    def __init__(self, job: Any, solver: Any, *, frontend_inputs: dict[str, ops_pb2.Definition]
                 | None = None, shared_refs: dict[str, ResultRef] | None = None) -> None:
        from buildkitpy.solver.solver import Job as SolverJob

        self.job = job
        self.solver = solver
        self.frontend_inputs = dict(frontend_inputs or {})
        # A child bridge (a frontend image's) shares its parent's refs: what it returns stays valid.
        self._owns_refs = shared_refs is None
        self._refs: dict[str, ResultRef] = {} if shared_refs is None else shared_refs
        # Interactive containers (NewContainer), released with the bridge.
        self.containers: dict[str, Any] = {}
        self._returned: asyncio.Future[FrontendResult] = asyncio.get_running_loop().create_future()
        self._solver_job = SolverJob(id=job.ref, progress=job.progress,
                                     session_ids=[job.session_id] if job.session_id else [],
                                     no_cache="no-cache" in job.frontend_attrs
                                     and job.frontend_attrs.get("no-cache", "") == "",
                                     entitlements=job.entitlements)

    def child(self, frontend_inputs: dict[str, ops_pb2.Definition] | None = None) -> GatewayBridge:
        """The bridge a nested frontend (a frontend image) talks to: its own inputs, Return and
        containers; this build's job, solver and refs."""
        return GatewayBridge(self.job, self.solver, frontend_inputs=frontend_inputs,
                             shared_refs=self._refs)

    @property
    def solver_job(self) -> Any:
        """The solver's view of this build (``buildkitpy.solver.solver.Job``)."""
        return self._solver_job

    @property
    def session_id(self) -> str:
        return self.job.session_id or ""

    def warn(self, vertex: str, message: str, detail: list[bytes] | None = None, *, level: int = 1,
             url: str = "", info: ops_pb2.SourceInfo | None = None,
             ranges: list[ops_pb2.Range] | None = None) -> None:
        self.job.progress.warning(vertex, message, list(detail or ()), level=level, url=url, info=info,
                                  ranges=list(ranges or ()))

    # -- solving -------------------------------------------------------------------------------

    def new_ref(self, definition: ops_pb2.Definition) -> ResultRef | None:
        if not getattr(definition, "def"):
            return None
        ref = ResultRef(id=secrets.token_hex(12), definition=definition)
        self._refs[ref.id] = ref
        return ref

    async def solve(self, *, definition: ops_pb2.Definition | None = None, frontend: str = "",
                    frontend_opt: dict[str, str] | None = None,
                    frontend_inputs: dict[str, ops_pb2.Definition] | None = None,
                    evaluate: bool = False) -> FrontendResult:
        if frontend:
            impl = FRONTENDS.get(frontend)
            if impl is None:
                raise Unimplemented(f"frontend {frontend!r} is not supported")
            result = await impl(self, dict(frontend_opt or {}), dict(frontend_inputs or {}))
            for ref in result.all_refs():  # the innermost frontend that returned a ref made it
                if ref.request is None:
                    ref.request = (frontend, dict(frontend_opt or {}))
        else:
            result = FrontendResult(ref=self.new_ref(definition or ops_pb2.Definition()))
        if evaluate:
            for ref in result.all_refs():
                await self.evaluate(ref)
        return result

    async def evaluate(self, ref: ResultRef) -> Any:
        """Solve ``ref`` (once) and return its snapshot; the bridge keeps the handle until close."""
        async with ref.lock:
            if ref.snapshot is None:
                result = await self.solver.solve(ref.definition, self._solver_job)
                ref.snapshot = result.ref
                ref.cache_keys = list(getattr(result, "cache_keys", None) or ())
            return ref.snapshot

    def ref(self, ref_id: str) -> ResultRef | None:
        """A ref by id; the empty id means "no result" (an empty scratch tree)."""
        if not ref_id:
            return None
        try:
            return self._refs[ref_id]
        except KeyError:
            raise NotFound(f"no such ref {ref_id}") from None

    async def resolve_image_config(self, ref: str, platform: Any = None, resolve_mode: str = "",
                                   log_name: str = "") -> tuple[str, bytes]:
        """Manifest digest and raw config of an image (``FROM``), through the worker's registry
        client with the build's session for credentials, under ``resolve_mode`` (default/pull/local).

        Shown as a vertex of its own named ``log_name`` (``[internal] load metadata for …``), its
        digest made from the source and platform, as BuildKit's ``inBuilderContext`` does."""
        from buildkitpy.llb.platform import default_platform
        from buildkitpy.solver.ops.source_image import resolve_image_config

        identifier = "docker-image://" + ref
        shown = platform if platform is not None else default_platform()
        vertex = "sha256:" + hashlib.sha256(f"{identifier}{shown}".encode()).hexdigest()
        self.job.progress.vertex(vertex, log_name or f"resolve image config for {identifier}", started=True)
        try:
            resolved = await resolve_image_config(self.solver.worker, ref, platform,
                                                  list(self._solver_job.session_ids), resolve_mode)
        except BaseException as exc:
            self.job.progress.vertex(vertex, completed=True, error=str(exc) or type(exc).__name__)
            raise
        self.job.progress.vertex(vertex, completed=True)
        capture = getattr(self.job, "provenance", None)
        if capture is not None:  # the build's provenance lists the images its frontend resolved
            capture.image_resolved(ref, platform, resolved.digest)
        return resolved.digest, resolved.config_bytes

    # -- file access ---------------------------------------------------------------------------

    async def with_root(self, ref_id: str, fn: Callable[[Path], Any]) -> Any:
        """``fn(root)`` on a worker thread with the tree of ref ``ref_id`` mounted read-only at ``root``."""
        ref = self.ref(ref_id)
        snapshot = await self.evaluate(ref) if ref is not None else None
        if snapshot is None:
            raise NotFound("the reference is empty (scratch): it has no files")

        def run() -> Any:
            with snapshot.mount() as root:
                return fn(Path(root))

        return await anyio.to_thread.run_sync(run)

    async def read_file(self, ref_id: str, path: str, offset: int = 0, length: int = 0) -> bytes:
        def read(root: Path) -> bytes:
            target = _resolve(root, path)
            try:
                with open(target, "rb") as f:
                    f.seek(offset)
                    return f.read(length if length > 0 else -1)
            except FileNotFoundError:
                raise NotFound(f"open {path}: no such file or directory") from None
            except IsADirectoryError:
                raise InvalidArgument(f"read {path}: is a directory") from None

        return await self.with_root(ref_id, read)

    async def read_dir(self, ref_id: str, path: str, include_pattern: str = "") -> list:
        import fnmatch

        def read(root: Path) -> list:
            target = _resolve(root, path)
            try:
                names = sorted(os.listdir(target))
            except FileNotFoundError:
                raise NotFound(f"readdir {path}: no such file or directory") from None
            except NotADirectoryError:
                raise InvalidArgument(f"readdir {path}: not a directory") from None
            out = []
            for name in names:
                if include_pattern and not fnmatch.fnmatchcase(name, include_pattern):
                    continue
                out.append(_stat_pb(target / name, name))
            return out

        return await self.with_root(ref_id, read)

    async def stat_file(self, ref_id: str, path: str) -> fsutil_stat_pb2.Stat:
        def stat(root: Path) -> fsutil_stat_pb2.Stat:
            target = _resolve(root, path)
            if not os.path.lexists(target):
                raise NotFound(f"stat {path}: no such file or directory")
            return _stat_pb(target, os.path.basename(path.rstrip("/")) or "/")

        return await self.with_root(ref_id, stat)

    # -- results -------------------------------------------------------------------------------

    def to_pb(self, result: FrontendResult) -> gateway_pb2.Result:
        out = gateway_pb2.Result(metadata=result.metadata)
        if result.refs is not None:
            for key, ref in result.refs.items():
                out.refs.refs[key].CopyFrom(_ref_pb(ref))
        else:
            out.ref.CopyFrom(_ref_pb(result.ref))
        attestations_to_pb(result, out)
        return out

    def from_pb(self, result: gateway_pb2.Result) -> FrontendResult:
        kind = result.WhichOneof("result")
        metadata = dict(result.metadata)
        attestations = attestations_from_pb(result, lambda r: self.ref(r.id))
        if kind == "ref":
            return FrontendResult(ref=self.ref(result.ref.id), metadata=metadata, attestations=attestations)
        if kind == "refs":
            return FrontendResult(refs={k: self.ref(v.id) for k, v in result.refs.refs.items()},
                                  metadata=metadata, attestations=attestations)
        if kind == "refDeprecated":
            return FrontendResult(ref=self.ref(result.refDeprecated), metadata=metadata,
                                  attestations=attestations)
        if kind == "refsDeprecated":
            return FrontendResult(refs={k: self.ref(v) for k, v in result.refsDeprecated.refs.items()},
                                  metadata=metadata, attestations=attestations)
        return FrontendResult(metadata=metadata, attestations=attestations)

    def set_return(self, result: FrontendResult | None = None, error: BaseException | None = None) -> None:
        if self._returned.done():
            raise InvalidArgument("result was already returned for this build")
        if error is not None:
            self._returned.set_exception(error)
        else:
            self._returned.set_result(result or FrontendResult())

    async def wait_return(self) -> FrontendResult:
        return await asyncio.shield(self._returned)

    def has_returned(self) -> bool:
        return self._returned.done()

    async def wait_returned(self) -> None:
        """Until Return (with a result or an error) has been called."""
        await asyncio.wait([self._returned])

    async def release_containers(self) -> None:
        """Stop and release every interactive container this bridge created."""
        while self.containers:
            _, container = self.containers.popitem()
            if container is not None:  # None: still being set up by NewContainer, which cleans up
                await container.release()

    def close(self) -> None:
        if self._owns_refs:
            for ref in self._refs.values():
                if ref.snapshot is not None:
                    ref.snapshot.release()
                    ref.snapshot = None
            self._refs.clear()
        if not self._returned.done():
            self._returned.cancel()
        elif not self._returned.cancelled():
            self._returned.exception()  # mark retrieved


def _ref_pb(ref: ResultRef | None) -> gateway_pb2.Ref:
    if ref is None:
        return gateway_pb2.Ref()
    return gateway_pb2.Ref(id=ref.id, **{"def": ref.definition})


def _resolve(root: Path, path: str) -> Path:
    """``path`` inside ``root``, with symlinks resolved as if ``root`` were ``/``."""
    from buildkitpy.snapshot.fs import secure_join

    return Path(secure_join(root, path))


def _stat_pb(path: Path, name: str) -> fsutil_stat_pb2.Stat:
    from buildkitpy.fsutil.modes import to_go_mode

    st = os.lstat(path)
    out = fsutil_stat_pb2.Stat(path=name, mode=to_go_mode(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                               size=st.st_size if statmod.S_ISREG(st.st_mode) else 0,
                               modTime=st.st_mtime_ns)
    if statmod.S_ISLNK(st.st_mode):
        out.linkname = os.readlink(path)
    return out
