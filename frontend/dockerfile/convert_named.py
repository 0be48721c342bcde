"""Named contexts (``--opt context:NAME=…``) as BuildKit's dockerui resolves them: which option a
stage or base name selects, and the state (and image config) each source kind loads.

Source kinds: ``local:DIR`` (built lazily by the dispatcher, see ``convert_dispatch``),
``docker-image://REF`` (a registry image with its config), ``input:KEY`` (a definition the caller of
the frontend passed as an input, with ``input-metadata:KEY`` carrying its image config).
``oci-layout://`` and git/http contexts are refused with a clear error until their sources exist.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.llb import Platform

from . import image_config as ic
from .convert_git import GitRefError, checkout, parse_git_ref
from .errors import DockerfileError

if TYPE_CHECKING:
    from .convert import ImageResolver

SUPPORTED_KINDS = ("local", "docker-image", "input", "git", "http", "https")


class NamedContextError(DockerfileError):
    """A named context option that names nothing usable."""

IMAGE_CONFIG_KEY = "containerimage.config"


@dataclass
class NamedContext:
    """A ``context:NAME=...`` option: ``source`` is ``local:DIR``, ``docker-image://REF``,
    ``input:KEY`` or a git or http(s) URL; ``excludes`` the named local directory's
    ``.dockerignore`` patterns; ``definition``/``image_config`` the frontend input (and its config)
    an ``input:`` names."""

    source: str
    excludes: list[str] = field(default_factory=list)
    definition: ops_pb2.Definition | None = None
    image_config: bytes | None = None

    @property
    def kind(self) -> str:
        kind = self.source.partition(":")[0]
        return "git" if kind.startswith("git@") else kind


def context_name(name: str) -> str:
    """The name a context option is looked up by: the familiar image name without ``:latest``
    (``docker.io/library/alpine:latest`` → ``alpine``), as ``dockerui.Client.NamedContext`` does."""
    try:
        ref = llb.reference.parse_normalized(name)
    except (ValueError, llb.LLBError) as e:
        raise NamedContextError(f"invalid context name {name}: {e}") from None
    return ref.familiar().removesuffix(":latest")


def lookup(
    contexts: Mapping[str, NamedContext], name: str, platform: Platform
) -> tuple[str, NamedContext] | None:
    """``(key, context)`` for ``name`` (``NAME::platform`` wins over ``NAME``); None for ``scratch``
    and ``context``, which are never named contexts."""
    if not contexts or name.lower() in ("scratch", "context"):
        return None
    short = context_name(name)
    for key in (f"{short}::{_format_all(platform.normalized())}", short):
        if key in contexts:
            return key, contexts[key]
    return None


async def load(
    nc: NamedContext,
    key: str,
    platform: Platform,
    resolve_image: ImageResolver | None,
) -> tuple[llb.State, ic.Image | None]:
    """The state and image config of a non-local named context (``key`` names it in progress)."""
    kind, _, value = nc.source.partition(":")
    if nc.kind == "docker-image":
        return await _load_image(value.removeprefix("//"), key, platform, resolve_image)
    if nc.kind == "input":
        return _load_input(nc, value, key)
    if nc.kind == "oci-layout":
        raise NamedContextError(f"oci-layout named contexts are not supported yet (context {key}): "
                         "buildkitpy has no oci-layout source")
    if nc.kind in ("git", "http", "https"):
        return _load_remote(nc, key), None
    raise NamedContextError(f"unsupported context source {kind} for {key}")


async def _load_image(
    ref: str, key: str, platform: Platform, resolve_image: ImageResolver | None
) -> tuple[llb.State, ic.Image | None]:
    if ref == "scratch":
        return llb.scratch(), None
    try:
        named = llb.normalize_image_ref(ref)
    except (ValueError, llb.LLBError) as e:
        raise NamedContextError(f"invalid image reference {ref!r} for context {key}: {e}") from None
    if resolve_image is None:
        raise NamedContextError(f"context {key}: docker-image contexts need registry support (not available)")
    try:
        _dgst, data = await resolve_image(named, platform)
    except Exception as e:  # the resolver's own error, named after the context
        raise NamedContextError(f"context {key}: {e}") from None
    img = ic.parse_image(data)
    img.pop("created", None)
    st = llb.image(named, platform=platform, custom_name=f"[context {key}] {ref}")
    return st.with_image_config(data), img


def _load_remote(nc: NamedContext, key: str) -> llb.State:
    """A git checkout, or (an http(s) URL that is no git repository) the downloaded file, named
    ``context`` as BuildKit names it."""
    try:
        ref = parse_git_ref(nc.source)
        if ref is not None:
            return checkout(ref, nc.source)
    except GitRefError as e:
        raise NamedContextError(f"invalid git context {nc.source} for {key}: {e}") from None
    if nc.kind == "git":
        raise NamedContextError(f"invalid git context {nc.source} for {key}")
    return llb.http(nc.source, filename="context", custom_name=f"[context {key}] {nc.source}")


def _load_input(nc: NamedContext, name: str, key: str) -> tuple[llb.State, ic.Image | None]:
    if nc.definition is None:
        raise NamedContextError(f"invalid input {name} for {key}")
    st = definition_state(nc.definition)
    if nc.image_config is None:
        return st, None
    return st.with_image_config(nc.image_config), ic.parse_image(nc.image_config)


def input_image_config(metadata_json: str) -> bytes | None:
    """The image config inside an ``input-metadata:KEY`` option (a JSON map of base64 values)."""
    try:
        m = json.loads(metadata_json)
        value = m.get(IMAGE_CONFIG_KEY) if isinstance(m, dict) else None
        return base64.b64decode(value, validate=True) if value is not None else None
    except (ValueError, TypeError) as e:
        raise NamedContextError(f"failed to parse input metadata {metadata_json}: {e}") from None


def definition_state(definition: ops_pb2.Definition) -> llb.State:
    """The result of an input's definition as a state whose ops keep their digests
    (``llb.from_definition``; source maps are dropped)."""
    raw = list(getattr(definition, "def"))
    if raw and not ops_pb2.Op.FromString(raw[-1]).inputs:
        raise NamedContextError("invalid input definition: no terminal op")
    try:
        return llb.from_definition(definition)
    except llb.LLBError as e:
        reason = str(e).removeprefix("invalid definition: ")
        raise NamedContextError(f"invalid input definition: {reason}") from None


def _format_all(p: Platform) -> str:
    return str(p) + (f"({p.os_version})" if p.os_version else "")
