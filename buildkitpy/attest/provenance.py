"""The SLSA provenance predicate of one result ref, as BuildKit's ``llbsolver/provenance`` writes
it: SLSA v1 (``https://slsa.dev/provenance/v1``, BuildKit's default) or v0.2, in ``min`` mode
(request without build args, no build steps) or ``max`` mode (request with build args, the LLB
steps as ``buildConfig``, the Dockerfile source and locations, the layers of each step).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

from google.protobuf.message import Message

from buildkitpy.api import ops_pb2
from buildkitpy.attest import gojson
from buildkitpy.attest.capture import Capture
from buildkitpy.attest.options import SLSA_V02, ProvenanceRequest
from buildkitpy.errors import InvalidArgument
from buildkitpy.gocompat import format_time

PREDICATE_V1 = "https://slsa.dev/provenance/v1"
PREDICATE_V02 = "https://slsa.dev/provenance/v0.2"
BUILD_TYPE_V1 = "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md"
BUILD_TYPE_V02 = "https://mobyproject.org/buildkit@v1"
# BuildKit's current LLB compatibility version (``solver/llbsolver/compat``): 0.31 behaviour.
COMPATIBILITY_VERSION = 30
_HOST_SPECIFIC_ARGS = frozenset({"cgroup-parent", "image-resolve-mode", "platform", "cache-imports"})


def predicate_type(version: str) -> str:
    return PREDICATE_V02 if version == SLSA_V02 else PREDICATE_V1


# -- package URLs (packageurl-go's escaping) -----------------------------------------------------


def _query_escape(s: str) -> str:
    return quote_plus(s, safe="")


def _path_escape(s: str) -> str:
    return quote(s, safe="$&+:=@")


def _familiar(name: str) -> str:
    if name.startswith("docker.io/"):
        name = name[len("docker.io/"):]
        if name.startswith("library/") and name.count("/") == 1:
            name = name[len("library/"):]
    return name


def format_platform(platform: Mapping[str, str] | tuple[str, str, str]) -> str:
    """containerd's ``platforms.Format(Normalize(p))``: ``linux/amd64``, ``linux/arm/v7``."""
    if isinstance(platform, tuple):
        os_, arch, variant = platform
    else:
        os_, arch = platform.get("os", ""), platform.get("architecture", "")
        variant = platform.get("variant", "")
    arch = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}.get(arch, arch)
    if arch == "arm64" and variant == "v8":
        variant = ""
    if arch == "arm" and not variant:
        variant = "v7"
    if arch == "amd64" and variant == "v1":
        variant = ""
    return "/".join(p for p in (os_ or "unknown", arch, variant) if p)


def image_purl(ref: str, platform: Mapping[str, str] | tuple[str, str, str] | None, *,
               local: bool = False) -> str:
    """BuildKit's ``purl.RefToPURL``: ``pkg:docker/<namespace>/<name>@<tag>?digest=…&platform=…``."""
    from buildkitpy.image.reference import parse_reference

    parsed = parse_reference(ref)
    name = _familiar(parsed.name)
    qualifiers = []
    if parsed.digest:
        qualifiers.append(("digest", parsed.digest))
    version = parsed.tag
    if platform is not None:
        qualifiers.append(("platform", format_platform(platform)))
    ns, _, base = name.rpartition("/")
    out = f"pkg:{'oci' if local else 'docker'}/"
    if ns:
        out += "/".join(_query_escape(p) for p in ns.split("/")) + "/"
    out += _query_escape(base)
    if version:
        out += "@" + _path_escape(version)
    if qualifiers:
        out += "?" + "&".join(f"{k}={_path_escape(v)}" for k, v in qualifiers)
    return out


def _digest_set(digest: str) -> dict[str, str]:
    algo, _, hexa = digest.partition(":")
    return {algo: hexa}


def materials(capture: Capture) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for img in capture.images:
        entry: dict[str, Any] = {"uri": image_purl(img.ref, img.platform, local=img.local)}
        if img.digest:
            entry["digest"] = _digest_set(img.digest)
        out.append(entry)
    for g in capture.git:
        out.append({"uri": g.url, "digest": {("sha256" if len(g.commit) == 64 else "sha1"): g.commit}})
    for h in capture.http:
        out.append({"uri": h.url, "digest": _digest_set(h.digest)})
    return out


# -- request -------------------------------------------------------------------------------------


def filter_args(attrs: Mapping[str, str]) -> dict[str, str]:
    """BuildKit's ``provenance.FilterArgs``: host-specific options and ``attest:*`` left out."""
    return {k: v for k, v in attrs.items() if k not in _HOST_SPECIFIC_ARGS and not k.startswith("attest:")}


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None and parts.username is None or not parts.scheme:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:xxxxx@" if parts.password is not None else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def request_provenance(frontend: str, args: Mapping[str, str],
                       capture: Capture) -> tuple[dict[str, Any], dict[str, Any]]:
    """(configSource, request) of ``provenance.RequestProvenance``: the context and the
    Dockerfile name move from the args to the config source."""
    args = dict(args)
    context_key = "context"
    if args.get("contextkey"):
        context_key = args["contextkey"]
    elif args.get("input:context"):
        context_key = "input:context"
    config: dict[str, Any] = {}
    if args.get(context_key):
        value = args.pop(context_key)
        config["uri"] = value
        plain = value.split("#", 1)[0]
        for g in capture.git:
            if g.url in (value, plain):
                config["digest"] = {("sha256" if len(g.commit) == 64 else "sha1"): g.commit}
        for h in capture.http:
            if h.url == value:
                config["digest"] = _digest_set(h.digest)
        config["uri"] = _redact(config["uri"])
    else:
        args.pop(context_key, None)
    if args.get("filename"):
        config["path"] = args.pop("filename")
    else:
        args.pop("filename", None)
    request: dict[str, Any] = {}
    if frontend:
        request["frontend"] = frontend
    if args:
        request["args"] = args
    return config, request


@dataclass
class BuildInfo:
    """The build-wide facts of a predicate."""

    frontend: str
    frontend_attrs: Mapping[str, str]
    invocation_id: str
    started: float
    builder_platform: str
    dockerfile_version: str = ""


def _requests(info: BuildInfo, ref_request: tuple[str, Mapping[str, str]] | None,
              capture: Capture) -> tuple[dict[str, Any], dict[str, Any]]:
    """(configSource, request) of a ref: from the frontend request that returned it, with the
    Solve's own request as ``root`` when that differs (a client-side frontend, as buildctl and
    buildx run the Dockerfile frontend, solves ``dockerfile.v0`` under a Solve without frontend).
    A definition solved directly has no request."""
    if ref_request is None:
        return {}, {}
    frontend, opts = ref_request
    config, request = request_provenance(frontend, filter_args(opts), capture)
    if info.frontend or info.frontend_attrs:
        root_config, root_request = request_provenance(info.frontend, filter_args(info.frontend_attrs),
                                                       capture)
        if (root_request.get("frontend") or root_request.get("args")) and \
                (root_config, root_request) != (config, request):
            request["root"] = {"configSource": root_config, "request": root_request}
    return config, request


def predicate_v1(req: ProvenanceRequest, info: BuildInfo, capture: Capture,
                 definition: ops_pb2.Definition | None, finished: float,
                 ref_request: tuple[str, Mapping[str, str]] | None = None,
                 layers: Mapping[tuple[str, int], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The SLSA v1 predicate (``ProvenancePredicateSLSA1``) as a JSON-ready dict; ``layers`` are the
    exported layer descriptors of (vertex digest, output) (max mode)."""
    config, request = _requests(info, ref_request, capture)
    root = request.pop("root", None)
    frontend = request.get("frontend", "")
    vcs: dict[str, str] = {}
    for k in [k for k in request.get("args", {}) if k.startswith("vcs:")]:
        v = request["args"].pop(k)
        if k == "vcs:source":
            v = _redact(v)
        if v:
            vcs[k[len("vcs:"):]] = v
    if "args" in request and not request["args"]:
        del request["args"]
    if capture.secrets:
        request["secrets"] = [_secret(s) for s in capture.secrets]
    if capture.ssh:
        request["ssh"] = [_secret(s) for s in capture.ssh]
    if capture.locals:
        request["locals"] = [{"name": n} for n in capture.locals]
    if root is not None:
        request["root"] = root
    incomplete = capture.incomplete or bool(capture.locals)
    if req.complete_materials and incomplete:
        names = "\n".join(f"  - {n}\n    reason: local_source" for n in capture.locals)
        raise InvalidArgument("provenance materials are incomplete\n\nThe build requested complete "
                              "provenance materials, but not all dependencies could be captured.\n\n"
                              + (f"Uncaptured local sources:\n{names}" if names else "").rstrip())
    completeness = {"request": bool(frontend), "resolvedDependencies": not incomplete}
    buildkit_md: dict[str, Any] = {}
    if vcs:
        buildkit_md["vcs"] = vcs
    internal: dict[str, Any] = {}
    if req.mode == "min":
        if _scrub_min(request):
            completeness["request"] = False
    else:
        steps, mapping, indexes = build_steps(definition)
        if steps:
            internal["buildConfig"] = {"llbDefinition": steps, "digestMapping": mapping}
        source = _source_metadata(definition, indexes)
        if source is not None:
            buildkit_md["source"] = source
        by_step = {f"step{indexes[d]}:{i}": [descs] for (d, i), descs in (layers or {}).items()
                   if d in indexes}
        if by_step:
            buildkit_md["layers"] = dict(sorted(by_step.items()))
    request["compatibilityVersion"] = COMPATIBILITY_VERSION
    internal["builderPlatform"] = info.builder_platform
    if frontend == "dockerfile.v0" and info.dockerfile_version:
        internal["dockerfileVersion"] = info.dockerfile_version
    build_def: dict[str, Any] = {"buildType": BUILD_TYPE_V1,
                                 "externalParameters": {"configSource": config, "request": request},
                                 "internalParameters": internal}
    deps = materials(capture)
    if deps:
        build_def["resolvedDependencies"] = deps
    metadata: dict[str, Any] = {"invocationId": info.invocation_id,
                                "startedOn": format_time(info.started),
                                "finishedOn": format_time(finished), "buildkit_metadata": buildkit_md}
    if not incomplete and not capture.network:
        metadata["buildkit_hermetic"] = True
    metadata["buildkit_completeness"] = completeness
    if req.reproducible:
        metadata["buildkit_reproducible"] = True
    return {"buildDefinition": build_def,
            "runDetails": {"builder": {"id": req.builder_id}, "metadata": metadata}}


def to_v02(pred: dict[str, Any]) -> dict[str, Any]:
    """BuildKit's ``ConvertToSLSA02`` of a v1 predicate."""
    bd, rd = pred["buildDefinition"], pred["runDetails"]
    ext, internal = bd["externalParameters"], bd["internalParameters"]
    config = {("entryPoint" if k == "path" else k): v for k, v in ext["configSource"].items()}
    env: dict[str, Any] = {"platform": internal.get("builderPlatform", "")}
    if internal.get("dockerfileVersion"):
        env["dockerfileVersion"] = internal["dockerfileVersion"]
    out: dict[str, Any] = {"builder": {"id": rd["builder"]["id"]}, "buildType": BUILD_TYPE_V02,
                           "invocation": {"configSource": config, "parameters": ext["request"],
                                          "environment": env}}
    if internal.get("buildConfig"):
        out["buildConfig"] = internal["buildConfig"]
    md = rd.get("metadata")
    if md is not None:
        meta: dict[str, Any] = {}
        for src, dst in (("invocationId", "buildInvocationID"), ("startedOn", "buildStartedOn"),
                         ("finishedOn", "buildFinishedOn")):
            if md.get(src):
                meta[dst] = md[src]
        meta["completeness"] = {"parameters": md["buildkit_completeness"]["request"], "environment": True,
                                "materials": md["buildkit_completeness"]["resolvedDependencies"]}
        meta["reproducible"] = bool(md.get("buildkit_reproducible"))
        meta["https://mobyproject.org/buildkit@v1#metadata"] = md.get("buildkit_metadata", {})
        if md.get("buildkit_hermetic"):
            meta["https://mobyproject.org/buildkit@v1#hermetic"] = True
        out["metadata"] = meta
    if bd.get("resolvedDependencies"):
        out["materials"] = bd["resolvedDependencies"]
    return out


def predicate(req: ProvenanceRequest, info: BuildInfo, capture: Capture,
              definition: ops_pb2.Definition | None, finished: float,
              ref_request: tuple[str, Mapping[str, str]] | None = None,
              layers: Mapping[tuple[str, int], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    pred = predicate_v1(req, info, capture, definition, finished, ref_request, layers)
    return to_v02(pred) if req.version == SLSA_V02 else pred


def _secret(s: Any) -> dict[str, Any]:
    return {"id": s.id, **({"optional": True} if s.optional else {})}


def _scrub_min(request: dict[str, Any]) -> bool:
    """min mode: build args and labels, secrets and ssh ids leave the request (recursively)."""
    incomplete = False
    args = request.get("args")
    if args:
        kept = {k: v for k, v in args.items() if not k.startswith(("build-arg:", "label:"))}
        incomplete = len(kept) != len(args)
        if kept:
            request["args"] = kept
        else:
            del request["args"]
    request.pop("secrets", None)
    request.pop("ssh", None)
    for inner in (request.get("inputs") or {}).values():
        if inner.get("request") and _scrub_min(inner["request"]):
            incomplete = True
    root = request.get("root")
    if root and root.get("request") is not None and _scrub_min(root["request"]):
        incomplete = True
    return incomplete


# -- build steps (max mode) ------------------------------------------------------------------------


def build_steps(definition: ops_pb2.Definition | None,
                ) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, int]]:
    """(llbDefinition steps, digest → stepN, digest → index) of ``provenance.toBuildSteps``: ops in
    depth-first order of their inputs from the final (op-less) vertex."""
    if definition is None or not getattr(definition, "def"):
        return [], {}, {}
    ops: dict[str, ops_pb2.Op] = {}
    last = ""
    for dt in getattr(definition, "def"):
        op = ops_pb2.Op()
        op.ParseFromString(dt)
        if op.WhichOneof("op") == "source":
            for k in ("local.session", "local.unique"):
                if k in op.source.attrs:
                    del op.source.attrs[k]
        last = "sha256:" + hashlib.sha256(dt).hexdigest()
        ops[last] = op
    order: list[str] = []
    seen: set[str] = set()

    def walk(dgst: str) -> None:
        stack = [(dgst, False)]
        while stack:
            d, done = stack.pop()
            if done:
                order.append(d)
                continue
            if d in seen:
                continue
            if d not in ops:
                raise InvalidArgument(f"failed to find input {d}")
            seen.add(d)
            stack.append((d, True))
            for inp in reversed(ops[d].inputs):
                if inp.digest not in seen:
                    stack.append((inp.digest, False))

    if ops[last].WhichOneof("op") is not None or len(ops[last].inputs) != 1:
        return [], {}, {}
    walk(last)
    indexes = {d: i for i, d in enumerate(order)}
    steps = []
    for i, d in enumerate(order):
        op = ops_pb2.Op()
        op.CopyFrom(ops[d])
        inputs = [f"step{indexes[inp.digest]}:{inp.index}" for inp in op.inputs]
        del op.inputs[:]
        step: dict[str, Any] = {"id": f"step{i}", "op": _go(op)}
        if inputs:
            step["inputs"] = inputs
        steps.append(step)
    return steps, {d: f"step{i}" for d, i in sorted(indexes.items())}, indexes


# An op's (or a source location's) Go JSON by its bytes: a build of a Dockerfile makes the same ops
# as its previous build but for the local sources' sessions (the COPYs of graph-500: 475 of its 500
# ops; their inputs' digests are not in the bytes, ``build_steps`` drops the inputs first), and
# turning each op into Go JSON field by field was two thirds of a cached graph's provenance. Kept
# only for messages of at most MAX_KEPT_GO bytes, whose values nobody changes: the history drops
# only inline data beyond 64 KiB (``manifest._drop_large_inline_data``).
MAX_GO = 4096
MAX_KEPT_GO = 8192
_GO: dict[tuple[str, bytes], dict[str, Any]] = {}


def _go(msg: Message) -> dict[str, Any]:
    """``gojson.to_go(msg)``, shared with every equal message (read-only)."""
    data = msg.SerializeToString(deterministic=True)
    if len(data) > MAX_KEPT_GO:
        return gojson.to_go(msg)
    key = (msg.DESCRIPTOR.full_name, data)
    got = _GO.get(key)
    if got is None:
        got = gojson.to_go(msg)
        if len(_GO) >= MAX_GO:
            _GO.clear()
        _GO[key] = got
    return got


def _source_metadata(definition: ops_pb2.Definition | None,
                     indexes: dict[str, int]) -> dict[str, Any] | None:
    if definition is None or not definition.HasField("Source") or not definition.Source.infos:
        return None
    import base64

    infos = []
    for si in definition.Source.infos:
        info: dict[str, Any] = {}
        if si.filename:
            info["filename"] = si.filename
        if si.language:
            info["language"] = si.language
        if si.data:
            info["data"] = base64.b64encode(si.data).decode()
        if si.HasField("definition"):
            steps, mapping, _ = build_steps(si.definition)
            if steps:
                info["llbDefinition"] = steps
                info["digestMapping"] = mapping
        infos.append(info)
    locations = {f"step{indexes[k]}": _go(v) for k, v in definition.Source.locations.items()
                 if k in indexes}
    out: dict[str, Any] = {}
    if locations:
        out["locations"] = dict(sorted(locations.items()))
    out["infos"] = infos
    return out

