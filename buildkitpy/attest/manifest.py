"""Provenance for exports and history: in-toto statements and attestation manifests.

A ``ProvenanceMaker`` is made once the build's result is known; each exporter that writes images
(``image``, ``oci``, ``docker``) asks it, per platform manifest, for the in-toto statements to
attach (``statements``), and ``write_attestation_manifest`` stores them as BuildKit does: one layer
per statement (``application/vnd.in-toto+json`` with the ``in-toto.io/predicate-type``
annotation), as an OCI artifact manifest (``artifactType``
``application/vnd.docker.attestation.manifest.v1+json``, the empty config, ``subject`` = the image
manifest) or, with ``oci-artifact=false``, as an image manifest with an ``unknown/unknown`` config.
The index lists it after the images with platform ``unknown/unknown`` and the annotations
``vnd.docker.reference.type=attestation-manifest`` and ``vnd.docker.reference.digest``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buildkitpy.attest import provenance as prov
from buildkitpy.attest.capture import BuildCapture, known_layer_descriptors, layer_descriptors
from buildkitpy.attest.options import ProvenanceRequest
from buildkitpy.errors import InvalidArgument
from buildkitpy.gocompat import go_json, go_json_indent

INTOTO_MEDIA_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE_ANNOTATION = "in-toto.io/predicate-type"
ARTIFACT_TYPE = "application/vnd.docker.attestation.manifest.v1+json"
REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
REFERENCE_TYPE_ATTESTATION = "attestation-manifest"
EMPTY_CONFIG = {"mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                "size": 2, "data": "e30="}
UNKNOWN_PLATFORM = {"architecture": "unknown", "os": "unknown"}


class ProvenanceMaker:
    """The provenance of one finished build's result refs."""

    def __init__(self, request: ProvenanceRequest, info: prov.BuildInfo, capture: BuildCapture,
                 result: Any) -> None:
        self.request = request
        self.info = info
        self.capture = capture
        self.result = result  # buildkitpy.gateway.bridge.FrontendResult
        # Per result key: the last exported image's (layer directory, descriptor) chain.
        self.exported: dict[str | None, list[tuple[str, dict[str, Any]]]] = {}
        # Layer directory → descriptor of a blob it already has (pulled layers), or None.
        self.layer_lookup: Any = None

    def _ref(self, key: str | None) -> Any:
        if self.result.refs is None:
            return self.result.ref
        return self.result.refs.get(key) if key is not None else next(iter(self.result.refs.values()), None)

    def predicate(self, key: str | None, *, request: ProvenanceRequest | None = None) -> dict[str, Any]:
        """The predicate for result ref ``key`` (None: the single ref)."""
        ref = self._ref(key)
        definition = ref.definition if ref is not None else None
        others = [r.definition for r in self.result.all_refs() if r is not ref]
        capture = self.capture.capture_for(definition, others, self._platforms(), key)
        ref_request = ref.request if ref is not None else None
        layers = known_layer_descriptors(self.capture, self.layer_lookup) if self.layer_lookup else {}
        layers.update(layer_descriptors(self.capture, self.exported.get(key, [])))
        return prov.predicate(request or self.request, self.info, capture, definition, time.time(),
                              ref_request, layers)

    def _platforms(self) -> list[tuple[str, tuple[str, str, str]]] | None:
        """(ref key, platform) of a multi-platform result (its ``refs.platforms`` metadata)."""
        raw = (self.result.metadata or {}).get("refs.platforms")
        if self.result.refs is None or not raw:
            return None
        try:
            return [(e["id"], (e["platform"].get("os", ""), e["platform"].get("architecture", ""),
                               e["platform"].get("variant", "")))
                    for e in json.loads(raw)["platforms"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def predicate_type(self, request: ProvenanceRequest | None = None) -> str:
        return prov.predicate_type((request or self.request).version)

    def statements(self, key: str | None, manifest_digest: str, platform: Mapping[str, str],
                   names: list[str]) -> list[tuple[str, bytes]]:
        """(predicate type, statement JSON) to attach to the image manifest of ``key``."""
        subjects = [{"name": prov.image_purl(n, platform), "digest": {"sha256": manifest_digest[7:]}}
                    for n in names]
        pred = self.predicate(key)
        statement = {"_type": STATEMENT_TYPE, "predicateType": self.predicate_type(), "subject": subjects,
                     "predicate": pred}
        return [(self.predicate_type(), go_json(statement).encode())]


@dataclass
class ExportProvenance:
    """What one exporter gets: the provenance maker and the frontend's statements (SBOMs), and
    whether it attaches inline-only attestations."""

    maker: ProvenanceMaker
    force_inline: bool  # the image exporter attaches inline-only attestations too
    requested: bool = True  # False: no provenance to attach, the export only tells the maker its layers
    # Result key → the frontend's attestations (``buildkitpy.attest.bundle.Statement``).
    statements: dict[str, list[Any]] = field(default_factory=dict)

    def attach(self, multi_platform: bool) -> bool:
        """Whether the export is an index with attestation manifests (BuildKit: as soon as one
        attestation is not inline-only, or the exporter inlines them, every one is attached)."""
        frontend = any(self.statements.values())
        if not self.requested and not frontend:
            return False
        return self.force_inline or multi_platform or frontend or not self.maker.request.inline_only

    def frontend_statements(self, key: str | None, platform: Mapping[str, str]) -> list[Any]:
        """The frontend's statements for result ``key`` (None: the single result, of ``platform``)."""
        if key is not None:
            return list(self.statements.get(key, ()))
        pid = "/".join(p for p in (platform.get("os", ""), platform.get("architecture", ""),
                                   platform.get("variant", "")) if p)
        if pid in self.statements:
            return list(self.statements[pid])
        return list(next(iter(self.statements.values()))) if len(self.statements) == 1 else []

    # What exporters call (they reach this package only through the object in their context).

    def subject_names(self, attrs: Mapping[str, str], metadata: Mapping[str, bytes]) -> list[str]:
        return image_names(attrs, metadata)

    def attestation_manifest(self, store: Any, key: str | None, image: dict[str, Any],
                             platform: Mapping[str, str], names: list[str], *, oci: bool,
                             oci_artifact: bool) -> dict[str, Any] | None:
        """Write the attestation manifest of the image manifest ``image`` (blocking); returns its
        index entry (None: nothing to attest for this platform). The frontend's statements (the
        core SBOM first) come before the provenance, as in BuildKit."""
        from buildkitpy import __version__
        from buildkitpy.attest import bundle

        statements: list[tuple[str, bytes]] = []
        subjects = [{"name": prov.image_purl(n, platform), "digest": {"sha256": image["digest"][7:]}}
                    for n in names]
        layers = self.maker.exported.get(key, [])
        for st in self.frontend_statements(key, platform):
            st = bundle.supplement_sbom(st, layers, f"buildkitpy-{__version__}")
            statements.append((st.predicate_type, bundle.statement_json(st, subjects)))
        if self.requested:
            statements += self.maker.statements(key, image["digest"], platform, names)
        if not statements:
            return None
        return write_attestation_manifest(store, statements, image, oci=oci, oci_artifact=oci_artifact)

    def files_wanted(self) -> bool:
        from buildkitpy.attest import files

        return files.wanted(self)

    def statement_files(self, key: str | None, root: Any, attrs: dict[str, str]) -> list[tuple[str, bytes]]:
        """(file name, statement) for each attestation to write next to the exported tree ``root``
        (blocking)."""
        from buildkitpy.attest import files

        return files.statement_files(self, key, root, attrs)


def image_names(attrs: Mapping[str, str], metadata: Mapping[str, bytes]) -> list[str]:
    """The exporter's image names (``name``, ``*`` = the frontend's ``image.name``) for subjects."""
    name = attrs.get("name", "")
    if name == "*" and "image.name" in metadata:
        name = metadata["image.name"].decode()
    return [n.strip() for n in name.split(",") if n.strip() and n.strip() != "*"]


def write_attestation_manifest(store: Any, statements: list[tuple[str, bytes]], subject: dict[str, Any],
                               *, oci: bool, oci_artifact: bool) -> dict[str, Any]:
    """Store the statements and their manifest (blocking); returns the index entry for it."""
    from buildkitpy.image import mediatypes

    if not oci:
        raise InvalidArgument('cannot export attestations with "oci-mediatypes=false"')
    layers = []
    for ptype, data in statements:
        digest = store.write_bytes(data)
        layers.append({"mediaType": INTOTO_MEDIA_TYPE, "digest": digest, "size": len(data),
                       "annotations": {PREDICATE_TYPE_ANNOTATION: ptype}})
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST}
    if oci_artifact:
        doc["artifactType"] = ARTIFACT_TYPE
        config = dict(EMPTY_CONFIG)
        config_bytes = b"{}"
    else:
        rootfs = {"type": "layers", "diff_ids": [d["digest"] for d in layers]}
        config_bytes = go_json({"architecture": "unknown", "os": "unknown", "config": {},
                                "rootfs": rootfs}).encode()
        config = {"mediaType": mediatypes.OCI_CONFIG, "digest": "", "size": len(config_bytes)}
    config["digest"] = store.write_bytes(config_bytes)
    doc["config"] = config
    doc["layers"] = layers
    if oci_artifact:
        doc["subject"] = {k: subject[k] for k in ("mediaType", "digest", "size")}
    data = go_json_indent(doc)
    labels = {"containerd.io/gc.ref.content.0": config["digest"]}
    labels.update({f"containerd.io/gc.ref.content.{i + 1}": d["digest"] for i, d in enumerate(layers)})
    digest = store.write_bytes(data, None, labels)
    return {"mediaType": mediatypes.OCI_MANIFEST, "digest": digest, "size": len(data),
            "annotations": {REFERENCE_DIGEST: subject["digest"], REFERENCE_TYPE: REFERENCE_TYPE_ATTESTATION},
            "platform": dict(UNKNOWN_PLATFORM)}


def history_blob(maker: ProvenanceMaker, key: str | None) -> tuple[bytes, dict[str, str]]:
    """The predicate a build's history record keeps for result ref ``key`` (BuildKit: always SLSA v1
    in max mode, indented, with the request's ``builder-id``)."""
    req = ProvenanceRequest(mode="max", builder_id=maker.request.builder_id)
    pred = maker.predicate(key, request=req)
    _drop_large_inline_data(pred)
    return go_json_indent(pred), {PREDICATE_TYPE_ANNOTATION: prov.PREDICATE_V1}


# Unlike BuildKit, the history copy leaves out file contents inlined in the LLB (a mkfile's data)
# beyond this size: records are kept for a long time, outside the build cache's GC limits.
HISTORY_INLINE_DATA_LIMIT = 64 << 10


def _drop_large_inline_data(pred: dict[str, Any]) -> None:
    config = pred.get("buildDefinition", {}).get("internalParameters", {}).get("buildConfig") or {}
    for step in config.get("llbDefinition") or []:
        for action in step.get("op", {}).get("Op", {}).get("file", {}).get("actions") or []:
            mkfile = action.get("Action", {}).get("mkfile")
            if mkfile and len(mkfile.get("data", "")) * 3 // 4 > HISTORY_INLINE_DATA_LIMIT:
                del mkfile["data"]
