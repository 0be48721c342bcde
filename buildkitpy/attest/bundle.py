"""The attestations a frontend attached to its result, made into in-toto statements for exporters.

As BuildKit's exporters do: a *bundle* (what an SBOM scanner wrote) is a directory of in-toto
statements, one per regular file, each kept with its own subjects (none: the exported image); an
in-toto attestation is a predicate in a file of its ref. Frontends may not attach SLSA provenance
(the daemon writes that). The core SBOM (``sbom.*`` of a bundle marked ``sbom-core``) comes first.
Exporters then add the image manifest as subject, and, for the core SPDX document, the layer each
listed file comes from (``comment: layerID: <digest>``) and the builder among its creators.

Unlike BuildKit, an SBOM scan that wrote nothing is an error naming the scanner (BuildKit silently
exports an attestation manifest without the SBOM).
"""

from __future__ import annotations

import json
import os
import posixpath
import stat as statmod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildkitpy.attest import sbom
from buildkitpy.errors import BuildkitpyError, Canceled, InvalidArgument, SolveError

MAX_ATTESTATION_BYTES = 40 << 20
PROVENANCE_PREFIX = "https://slsa.dev/provenance/"


@dataclass
class Statement:
    """One in-toto attestation ready for an exporter: its predicate (JSON) and subjects."""

    predicate_type: str
    predicate: bytes
    path: str
    metadata: dict[str, bytes] = field(default_factory=dict)
    subjects: list[Any] = field(default_factory=list)  # gateway.bridge.InTotoSubject

    @property
    def is_core_sbom(self) -> bool:
        core = self.metadata.get(sbom.SBOM_CORE_KEY)
        return core is not None and posixpath.basename(self.path).split(".", 1)[0] == core.decode()


def _read_regular(path: Path, shown: str) -> bytes:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise InvalidArgument(
            f"cannot read in-toto attestation: open {shown}: no such file or directory") from None
    if not statmod.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{shown} is not a regular file")
    if st.st_size > MAX_ATTESTATION_BYTES:
        raise InvalidArgument(f"{shown} exceeds {MAX_ATTESTATION_BYTES} bytes")
    return path.read_bytes()


def unbundle_dir(root: Path, att: Any) -> list[Statement]:
    """The statements of bundle ``att`` whose ref's tree is at ``root`` (blocking)."""
    from buildkitpy.gateway.bridge import SUBJECT_RAW, InTotoSubject
    from buildkitpy.snapshot.fs import secure_join

    directory = Path(secure_join(root, att.path or "/"))
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise InvalidArgument(f"attestation bundle directory {att.path or '/'} does not exist") from None
    except NotADirectoryError:
        raise InvalidArgument(f"attestation bundle {att.path or '/'} is not a directory") from None
    out = []
    for name in names:
        shown = posixpath.join(att.path or "/", name)
        data = _read_regular(directory / name, shown)
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise InvalidArgument(f"cannot decode in-toto statement {shown}: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument(f"cannot decode in-toto statement {shown}: not a JSON object")
        ptype = doc.get("predicateType")
        if not isinstance(ptype, str):
            ptype = ""
        if att.predicate_type and ptype != att.predicate_type:
            raise InvalidArgument(f"bundle entry {shown} has predicate type {ptype!r}, not the required "
                                  f"{att.predicate_type} (each file must be an in-toto statement)")
        if ptype.startswith(PROVENANCE_PREFIX):
            raise InvalidArgument("frontend may not bundle provenance attestations")
        subjects = []
        for s in doc.get("subject") or []:
            if not isinstance(s, dict) or not isinstance(s.get("digest") or {}, dict):
                raise InvalidArgument(f"cannot decode in-toto statement {shown}: bad subject {s!r}")
            digests = [f"{k}:{v}" for k, v in sorted((s.get("digest") or {}).items())]
            subjects.append(InTotoSubject(SUBJECT_RAW, str(s.get("name", "")), digests))
        predicate = go_map_json(doc.get("predicate")).encode()
        out.append(Statement(ptype, predicate, posixpath.join(att.path, name), dict(att.metadata), subjects))
    return out


def go_map_json(value: Any) -> str:
    """JSON as Go's encoding/json writes a decoded ``interface{}``: compact, map keys sorted,
    ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _failed(err: BuildkitpyError, message: str) -> BuildkitpyError:
    if isinstance(err, SolveError):
        return SolveError(message, vertex=err.vertex, exit_code=err.exit_code)
    out = BuildkitpyError(message)
    out.grpc_code = err.grpc_code
    return out


async def collect(bridge: Any, result: Any,
                  sbom_request: sbom.SBOMRequest | None) -> dict[str, list[Statement]]:
    """Solve and unbundle every attestation of ``result`` (a ``FrontendResult``): result key →
    its statements, core SBOM first. Errors name the SBOM scanner when it is the one at fault."""
    from buildkitpy.gateway.bridge import ATTESTATION_BUNDLE

    scanner = sbom_request.generator if sbom_request is not None else "(from the frontend)"
    out: dict[str, list[Statement]] = {}
    for key, atts in result.attestations.items():
        statements: list[Statement] = []
        for att in atts:
            is_sbom = att.metadata.get(sbom.REASON_KEY) == sbom.REASON_SBOM.encode()
            if att.ref is None:
                raise InvalidArgument(f"attestation of {key} has no ref with its content")
            try:
                await bridge.evaluate(att.ref)
            except BuildkitpyError as e:
                if not is_sbom or isinstance(e, Canceled):
                    raise
                raise _failed(e, f"sbom scanner {scanner} failed for {key}: {e}") from None
            if att.kind == ATTESTATION_BUNDLE:
                found = await bridge.with_root(att.ref.id, lambda root, a=att: unbundle_dir(root, a))
                if is_sbom and not found:
                    raise InvalidArgument(
                        f"sbom scanner {scanner} wrote no SBOM for {key}: it must write in-toto statements "
                        f"(e.g. sbom.spdx.json) into $BUILDKIT_SCAN_DESTINATION ({sbom.OUT_DIR})")
                statements += found
            else:
                if att.predicate_type.startswith(PROVENANCE_PREFIX):
                    raise InvalidArgument("frontend may not set provenance attestations")
                if not att.path:
                    raise InvalidArgument("attestation does not have set path")
                data = await bridge.with_root(att.ref.id, lambda root, a=att: _read_regular(
                    Path(_secure(root, a.path)), a.path))
                statements.append(Statement(att.predicate_type, data, att.path, dict(att.metadata),
                                            list(att.subjects)))
        statements.sort(key=lambda s: not s.is_core_sbom)  # stable: the core SBOM first
        out[key] = statements
    return out


def _secure(root: Path, path: str) -> str:
    from buildkitpy.snapshot.fs import secure_join

    return str(secure_join(root, path))


def statement_json(st: Statement, default_subjects: list[dict[str, Any]]) -> bytes:
    """The in-toto statement of ``st`` with the exporter's subjects (its ``Self`` subjects become
    the image's names)."""
    from buildkitpy.attest.manifest import STATEMENT_TYPE
    from buildkitpy.gateway.bridge import SUBJECT_SELF, InTotoSubject
    from buildkitpy.gocompat import go_json

    subjects: list[dict[str, Any]] = []
    for s in st.subjects or [InTotoSubject(SUBJECT_SELF)]:
        name = s.name or "_"
        if s.kind == SUBJECT_SELF:
            for d in default_subjects:
                subjects.append({"name": d["name"], "digest": d["digest"]})
                if name != "_":
                    subjects.append({"name": name, "digest": d["digest"]})
        else:
            digest = {}
            for value in s.digests:
                algo, _, hexpart = value.partition(":")
                digest[algo] = hexpart
            subjects.append({"name": name, "digest": dict(sorted(digest.items()))})
    head = go_json({"_type": STATEMENT_TYPE, "predicateType": st.predicate_type, "subject": subjects})
    predicate = st.predicate.strip() or b"null"
    return head[:-1].encode() + b',"predicate":' + predicate + b"}"


def supplement_sbom(st: Statement, layers: Sequence[tuple[str, Mapping[str, Any]]],
                    builder: str) -> Statement:
    """The core SPDX document with, for each file it lists without a comment, the exported layer
    that holds it (``layerID: <blob digest>``), and ``Tool: <builder>`` among its creators (blocking;
    ``layers``: (layer directory, descriptor) lowest first). Anything else is returned as is."""
    if st.predicate_type != sbom.PREDICATE_SPDX or not st.is_core_sbom:
        return st
    try:
        doc = json.loads(st.predicate)
    except ValueError:
        return st
    if not isinstance(doc, dict) or "spdxVersion" not in doc:
        return st
    found: dict[str, str | None] = {}

    def layer_of(name: str) -> str | None:
        rel = posixpath.normpath(posixpath.join("/", name)).lstrip("/")
        if rel not in found:
            found[rel] = None
            for directory, desc in reversed(layers):
                p = Path(directory) / rel
                try:
                    st_ = os.lstat(p)
                except OSError:
                    continue
                if statmod.S_ISCHR(st_.st_mode) and st_.st_rdev == 0:
                    continue  # an overlay whiteout: the file was deleted in this layer
                found[rel] = str(desc["digest"])
                break
        return found[rel]

    files = [f for f in doc.get("files") or [] if isinstance(f, dict)]
    for pkg in doc.get("packages") or []:
        if isinstance(pkg, dict):
            files += [f for f in pkg.get("files") or [] if isinstance(f, dict)]
    for f in files:
        if f.get("comment") or not isinstance(f.get("fileName"), str):
            continue
        layer = layer_of(f["fileName"])
        if layer is not None:
            f["comment"] = f"layerID: {layer}"
    info = doc.get("creationInfo")
    if not isinstance(info, dict):
        info = doc["creationInfo"] = {}
    creators = info.get("creators")
    if not isinstance(creators, list):
        creators = info["creators"] = []
    creators.append(f"Tool: {builder}")
    data = json.dumps(_spdx_ordered(doc), separators=(",", ":"), ensure_ascii=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Statement(st.predicate_type, data.encode(), st.path, st.metadata, st.subjects)


# The order BuildKit writes an SPDX 2.3 document in (it decodes and re-encodes the core SBOM with
# the SPDX tools' structs); keys it does not know stay after these, in their order.
_DOCUMENT_KEYS = ("spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace", "externalDocumentRefs",
                  "comment", "creationInfo", "packages", "files", "hasExtractedLicensingInfos",
                  "relationships", "annotations", "snippets")
_CREATION_KEYS = ("licenseListVersion", "creators", "created", "comment")
_FILE_KEYS = ("fileName", "SPDXID", "fileTypes", "checksums", "licenseConcluded", "licenseInfoInFiles",
              "licenseComments", "copyrightText", "artifactOfs", "comment", "noticeText", "fileContributors",
              "attributionTexts", "fileDependencies", "annotations")
_PACKAGE_KEYS = ("name", "SPDXID", "versionInfo", "packageFileName", "supplier", "originator",
                 "downloadLocation", "filesAnalyzed", "packageVerificationCode", "checksums", "homepage",
                 "sourceInfo", "licenseConcluded", "licenseInfoFromFiles", "licenseDeclared",
                 "licenseComments", "copyrightText", "summary", "description", "comment", "externalRefs",
                 "attributionTexts", "primaryPackagePurpose", "releaseDate", "builtDate", "validUntilDate",
                 "hasFiles", "annotations")


def _ordered(value: Any, keys: tuple[str, ...]) -> Any:
    if not isinstance(value, dict):
        return value
    out = {k: value[k] for k in keys if k in value}
    out.update((k, v) for k, v in value.items() if k not in out)
    return out


def _spdx_ordered(doc: dict[str, Any]) -> dict[str, Any]:
    out = _ordered(doc, _DOCUMENT_KEYS)
    out["creationInfo"] = _ordered(out.get("creationInfo"), _CREATION_KEYS)
    for key, keys in (("files", _FILE_KEYS), ("packages", _PACKAGE_KEYS)):
        if isinstance(out.get(key), list):
            out[key] = [_ordered(x, keys) for x in out[key]]
    return out
