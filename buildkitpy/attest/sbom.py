"""SBOM attestations (``attest:sbom``): BuildKit's scanner protocol.

The scanner is an image (``generator=``, by default ``docker/buildkit-syft-scanner:stable-1``) run
as one exec op per platform, on the build platform, with its entrypoint and command:

- the result to scan mounted read-only at ``/run/src/core/sbom`` (``$BUILDKIT_SCAN_SOURCE``);
- extra trees (the build context with ``BUILDKIT_SBOM_SCAN_CONTEXT``, stages with
  ``BUILDKIT_SBOM_SCAN_STAGE``) read-only under ``/run/src/extras/sbom-<name>``
  (``$BUILDKIT_SCAN_SOURCE_EXTRAS``);
- an empty ``/run/out/`` (``$BUILDKIT_SCAN_DESTINATION``) where it writes one in-toto statement per
  file (``sbom.spdx.json`` for the core, predicate type ``https://spdx.dev/Document``);
- a tmpfs on ``/tmp``; the generator's other ``key=value`` fields as ``BUILDKIT_SCAN_<key>``.

The output mount becomes a *bundle* attestation of the result; exporters unbundle it
(``buildkitpy.attest.bundle``). This module only builds the LLB: it runs in the frontend
(in-process or in a frontend image), through the frontend's gateway client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buildkitpy import llb
from buildkitpy.errors import InvalidArgument

CORE_NAME = "sbom"
EXTRA_PREFIX = CORE_NAME + "-"
SRC_DIR = "/run/src/"
OUT_DIR = "/run/out/"
PREDICATE_SPDX = "https://spdx.dev/Document"
# Attestation metadata keys and values (BuildKit's solver/result).
REASON_KEY = "reason"
REASON_SBOM = "sbom"
REASON_PROVENANCE = "provenance"
SBOM_CORE_KEY = "sbom-core"
INLINE_ONLY_KEY = "inline-only"
# Dockerfile build args choosing extra trees to scan (not set as env in RUN steps).
SCAN_CONTEXT_ARG = "BUILDKIT_SBOM_SCAN_CONTEXT"
SCAN_STAGE_ARG = "BUILDKIT_SBOM_SCAN_STAGE"


@dataclass(frozen=True)
class SBOMRequest:
    """``attest:sbom``: the scanner image (normalized, with a tag) and its parameters."""

    generator: str
    params: dict[str, str] = field(default_factory=dict)


def sbom_request(attrs: Mapping[str, str]) -> SBOMRequest | None:
    """The build's SBOM request (None when it asks for none); ``InvalidArgument`` for a bad one."""
    from buildkitpy.attest import options

    fields = options.parse(attrs).get(options.SBOM)
    if fields is None:
        return None
    generator = fields.get("generator", "")
    if not generator:
        raise InvalidArgument("sbom scanner cannot be empty")
    try:
        ref = llb.reference.parse_normalized(generator)
    except InvalidArgument as e:
        raise InvalidArgument(f"failed to parse sbom scanner {generator}: {e}") from None
    name = str(ref) if ref.tag or ref.digest else f"{ref}:latest"
    return SBOMRequest(name, {k: v for k, v in fields.items() if k != "generator"})


@dataclass(frozen=True)
class Scanner:
    """A resolved scanner image: what it runs and where."""

    image: str
    config: dict[str, Any]
    platform: llb.Platform
    params: dict[str, str]

    @property
    def args(self) -> list[str]:
        cfg = self.config.get("config") or {}
        return list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])

    def scan(self, name: str, core: llb.State, extras: Mapping[str, llb.State], *,
             ignore_cache: bool = False) -> llb.State:
        """The scanner's output directory for ``core`` (and ``extras``), as a state; ``name`` is
        the platform the result is for (shown in the step's name)."""
        cfg = self.config.get("config") or {}
        env: dict[str, str] = {}
        for entry in cfg.get("Env") or []:
            key, _, value = str(entry).partition("=")
            env[key] = value
        env["BUILDKIT_SCAN_DESTINATION"] = OUT_DIR
        env["BUILDKIT_SCAN_SOURCE"] = SRC_DIR + "core/" + CORE_NAME
        if extras:
            env["BUILDKIT_SCAN_SOURCE_EXTRAS"] = SRC_DIR + "extras/"
        for key in sorted(self.params):
            env["BUILDKIT_SCAN_" + key] = self.params[key]
        image = llb.image(self.image, platform=self.platform).with_platform(self.platform)
        mounts: list[llb.Mount] = [llb.tmpfs("/tmp"),
                                   llb.bind(SRC_DIR + "core/" + CORE_NAME, core, readonly=True)]
        for key in sorted(extras):
            mounts.append(llb.bind(SRC_DIR + "extras/" + EXTRA_PREFIX + key, extras[key], readonly=True))
        mounts.append(llb.bind(OUT_DIR.rstrip("/"), llb.scratch()))
        options: dict[str, Any] = {"custom_name": f"[{name}] generating sbom using {self.image}",
                                   "platform": self.platform, "env": env,
                                   "cwd": cfg.get("WorkingDir") or "/"}
        if ignore_cache:
            options["ignore_cache"] = True
        run = image.run(self.args, mounts=mounts, **options)
        return run.get_mount(OUT_DIR.rstrip("/"))


def scanner_from_config(request: SBOMRequest, config: bytes, platform: llb.Platform) -> Scanner:
    """The scanner of ``request`` whose image config (as resolved) is ``config``."""
    try:
        doc = json.loads(config)
    except ValueError as e:
        raise InvalidArgument(f"sbom scanner {request.generator}: invalid image config: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config") or {}, dict):
        raise InvalidArgument(f"sbom scanner {request.generator}: invalid image config")
    scanner = Scanner(request.generator, doc, platform, dict(request.params))
    if not scanner.args:
        raise InvalidArgument(f"scanner {request.generator} does not have cmd")
    return scanner


def enabled_for_stage(stage: str, value: str) -> bool:
    """``BUILDKIT_SBOM_SCAN_*``: a boolean, or a comma-separated list of stage names."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return stage in value.split(",")


def bundle_attestation(ref: Any) -> Any:
    """The bundle attestation of a scanner's output ``ref`` (a gateway ``ResultRef``)."""
    from buildkitpy.gateway.bridge import ATTESTATION_BUNDLE, Attestation

    return Attestation(kind=ATTESTATION_BUNDLE, ref=ref, predicate_type=PREDICATE_SPDX,
                       metadata={REASON_KEY: REASON_SBOM.encode(), SBOM_CORE_KEY: CORE_NAME.encode()})


def has_sbom(result: Any) -> bool:
    """Whether a frontend result already carries an SBOM."""
    return any(a.predicate_type == PREDICATE_SPDX for atts in result.attestations.values() for a in atts)
