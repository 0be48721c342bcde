"""One Solve's provenance, from the request's attrs to the exports and the history record."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from buildkitpy.attest import bundle, options, sbom
from buildkitpy.attest.capture import BuildCapture, ProvenanceCollector
from buildkitpy.attest.manifest import ExportProvenance, ProvenanceMaker, history_blob
from buildkitpy.attest.provenance import BuildInfo, format_platform

log = logging.getLogger(__name__)

IMAGE_EXPORTERS = ("image", "oci", "docker")
FILE_EXPORTERS = ("local", "tar")  # write provenance.json next to the files


class BuildProvenance:
    """Parses ``attest:*`` (raising ``InvalidArgument``/``Unimplemented`` before anything runs),
    captures what the build uses, and hands provenance to exporters and the history record."""

    def __init__(self, ref: str, frontend: str, frontend_attrs: Mapping[str, str],
                 collector: ProvenanceCollector | None) -> None:
        self.request = options.provenance_request(frontend_attrs)
        self.sbom = sbom.sbom_request(frontend_attrs)
        # Result key → the statements of the frontend's attestations (SBOMs), once collected.
        self.statements: dict[str, list[bundle.Statement]] = {}
        self.frontend = frontend
        self.frontend_attrs = dict(frontend_attrs)
        self._collector = collector
        self.capture = collector.begin(ref) if collector is not None else BuildCapture(ref)
        self.maker: ProvenanceMaker | None = None

    def result_ready(self, result: Any, worker: Any = None) -> None:
        """The build's result is known (``worker``: where pulled layer blobs are looked up)."""
        from buildkitpy import __version__
        from buildkitpy.worker import host_platform

        info = BuildInfo(frontend=self.frontend, frontend_attrs=self.frontend_attrs,
                         invocation_id=self.capture.invocation_id, started=self.capture.started,
                         builder_platform=format_platform(host_platform()), dockerfile_version=__version__)
        self.maker = ProvenanceMaker(self.request or options.ProvenanceRequest(), info, self.capture, result)
        if worker is not None:
            self.maker.layer_lookup = _pulled_layers(worker)

    async def collect(self, bridge: Any, result: Any) -> None:
        """Solve and read the attestations the frontend attached to ``result`` (the SBOM scans),
        before anything is exported. A requested SBOM the frontend did not make (plain LLB, a
        frontend that does not scan) is made here, as BuildKit's SBOM processor does: each result
        ref scanned alone, without extras."""
        if self.sbom is not None and not sbom.has_sbom(result):
            await _scan_results(bridge, result, self.sbom, self.frontend_attrs)
        self.statements = await bundle.collect(bridge, result, self.sbom)

    def for_exporter(self, kind: str) -> ExportProvenance | None:
        """What exporter ``kind`` attaches (None: an exporter without attestations)."""
        if self.maker is None or kind not in IMAGE_EXPORTERS + FILE_EXPORTERS:
            return None
        return ExportProvenance(self.maker, force_inline=kind == "image", requested=self.request is not None,
                                statements=self.statements)

    async def record(self, recording: Any) -> None:
        """Attach a max-mode SLSA v1 predicate per result ref to the history record, as BuildKit
        always does (buildx's ``--metadata-file`` reads ``buildx.build.provenance`` from it)."""
        maker = self.maker
        if maker is None or recording is None:
            return
        result = maker.result
        keys: list[str | None]
        if result.refs is None:
            keys = [None] if result.ref is not None else []
        else:
            keys = [k for k, r in result.refs.items() if r is not None]
        for key in keys:
            try:
                # (in a thread: it reads every step's layer chain and encodes a predicate listing
                # every step, which for a big graph is long)
                data, annotations = await anyio.to_thread.run_sync(history_blob, maker, key)
                desc = await recording.add_blob(data, "application/vnd.in-toto+json", annotations)
                recording.add_attestation(desc, result_key=key or "")
            except Exception:  # noqa: BLE001 - the record is kept without it
                log.exception("cannot record the provenance of build %s", recording.ref)

    def close(self) -> None:
        if self._collector is not None:
            self._collector.end(self.capture.ref)


def _pulled_layers(worker: Any) -> Any:
    """Layer directory → descriptor of the registry blob it was pulled from (if still stored)."""
    from pathlib import Path

    puller = worker.image_puller
    if getattr(worker.snapshots, "mode", "overlay") != "overlay":
        return None  # copy-mode snapshots have no per-layer directories

    def lookup(path: str) -> dict[str, Any] | None:
        p = Path(path)
        pulled = puller.chains.layer_blob(p.parent.name) if p.name == "fs" else None
        if pulled is None or not puller.store.exists(pulled[0]):
            return None
        return {"mediaType": pulled[1], "digest": pulled[0], "size": pulled[2]}

    return lookup


async def _scan_results(bridge: Any, result: Any, request: sbom.SBOMRequest,
                        attrs: Mapping[str, str]) -> None:
    """Attach a scan of each result ref to ``result`` (keys: its ``refs.platforms`` ids, or the
    worker's platform for a single ref)."""
    import json

    from buildkitpy import llb
    from buildkitpy.errors import BuildkitpyError, InvalidArgument

    worker = bridge.solver.worker
    p = (getattr(worker, "platforms", None) or [{}])[0]
    platform = llb.Platform(p.get("os", "linux"), p.get("architecture", "amd64"), p.get("variant", ""))
    try:
        _, config = await bridge.resolve_image_config(request.generator, platform,
                                                      attrs.get("image-resolve-mode", ""))
    except BuildkitpyError as e:
        raise type(e)(f"failed to resolve sbom scanner image {request.generator}: {e}") from None
    scanner = sbom.scanner_from_config(request, config, platform)
    ignore_cache = attrs.get("no-cache") == ""
    targets: list[tuple[str, Any]] = []
    if result.refs is None:
        targets = [(str(platform), result.ref)]
    elif "refs.platforms" in (result.metadata or {}):
        try:
            ids = [e["id"] for e in json.loads(result.metadata["refs.platforms"])["platforms"]]
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidArgument(f"invalid refs.platforms metadata: {e}") from None
        targets = [(i, result.refs.get(i)) for i in ids]
    else:
        targets = list(result.refs.items())
    for key, ref in targets:
        if ref is None:
            continue
        state = scanner.scan(key, llb.from_definition(ref.definition), {}, ignore_cache=ignore_cache)
        scanned = await bridge.solve(definition=llb.marshal(state, platform=platform))
        result.attestations.setdefault(key, []).append(sbom.bundle_attestation(scanned.ref))
