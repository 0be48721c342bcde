"""The ``image`` exporter: the result as an image (layers, config, manifest or index) in the
daemon's content store, named and optionally pushed to registries.

Options as BuildKit's: ``name`` (comma-separated; ``*`` takes the frontend's ``image.name``),
``push``, ``push-by-digest``, ``registry.insecure``, ``name-canonical``, ``unpack``, ``store``,
``dangling-name-prefix``/``dangling-name-empty-only``; everything else (compression, media types,
annotations, timestamps) is for the image assembly (``buildkitpy.exporter.imagebuild``).

The image store is the pull database's name records (``buildkitpy.image.resolvemode``): with
``store=true`` (the default) every name is recorded for the image's digest, and ``name-canonical``
adds ``name:tag@digest``, so a later ``FROM name`` with ``image-resolve-mode=local`` uses the image
without a registry. ``unpack`` is accepted and does nothing more: the result's snapshots are
already unpacked, and a build from the named image unpacks its (stored) layer blobs on first use.
Registry credentials come from the build's client session (its ``Auth`` attachable), registry
settings (mirrors are not pushed to, ``http``, ``insecure``, ``ca``) from the daemon config.

The response carries ``containerimage.digest``, ``containerimage.config.digest``,
``containerimage.descriptor`` (base64 JSON) and ``image.name``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from buildkitpy.errors import BuildkitpyError, InvalidArgument, SolveError
from buildkitpy.exporter import ExportContext
from buildkitpy.image.push import ImagePusher, push_registries
from buildkitpy.image.reference import Reference, parse_reference
from buildkitpy.image.registry import Descriptor, RegistryClient

KEY_NAME = "name"
KEY_PUSH = "push"
KEY_PUSH_BY_DIGEST = "push-by-digest"
KEY_INSECURE = "registry.insecure"
KEY_UNPACK = "unpack"
KEY_STORE = "store"
KEY_NAME_CANONICAL = "name-canonical"
KEY_DANGLING_PREFIX = "dangling-name-prefix"
KEY_DANGLING_EMPTY_ONLY = "dangling-name-empty-only"
OWN_KEYS = frozenset({KEY_NAME, KEY_PUSH, KEY_PUSH_BY_DIGEST, KEY_INSECURE, KEY_UNPACK, KEY_STORE,
                      KEY_NAME_CANONICAL, KEY_DANGLING_PREFIX, KEY_DANGLING_EMPTY_ONLY})

RESP_DIGEST = "containerimage.digest"
RESP_CONFIG_DIGEST = "containerimage.config.digest"
RESP_DESCRIPTOR = "containerimage.descriptor"
RESP_NAME = "image.name"

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(key: str, value: str) -> bool:
    """Go's ``strconv.ParseBool``; an empty value (``push`` alone) means true, as BuildKit reads it."""
    if value == "" or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"non-bool value {value!r} specified for {key}")


@dataclass
class ImageExportOptions:
    name: str = ""
    push: bool = False
    push_by_digest: bool = False
    insecure: bool = False
    unpack: bool = False
    store: bool = True
    name_canonical: bool = False
    dangling_prefix: str = ""
    dangling_empty_only: bool = False

    @classmethod
    def parse(cls, attrs: Mapping[str, str]) -> ImageExportOptions:
        opts = cls(name=attrs.get(KEY_NAME, ""), dangling_prefix=attrs.get(KEY_DANGLING_PREFIX, ""))
        for key, field_name in ((KEY_PUSH, "push"), (KEY_PUSH_BY_DIGEST, "push_by_digest"),
                                (KEY_INSECURE, "insecure"), (KEY_UNPACK, "unpack"), (KEY_STORE, "store"),
                                (KEY_NAME_CANONICAL, "name_canonical"),
                                (KEY_DANGLING_EMPTY_ONLY, "dangling_empty_only")):
            if key in attrs:
                setattr(opts, field_name, parse_bool(key, attrs[key]))
        return opts


def target_names(opts: ImageExportOptions, digest: str, metadata: Mapping[str, bytes]) -> list[str]:
    """The names to give the image (``name``, ``*`` resolved, dangling names added)."""
    name = opts.name
    if name == "*" and "image.name" in metadata:
        name = metadata["image.name"].decode()
    if opts.dangling_prefix and (not opts.dangling_empty_only or not name):
        dangling = f"{opts.dangling_prefix}@{digest}"
        name = f"{name},{dangling}" if name else dangling
    return [n.strip() for n in name.split(",") if n.strip()] if name else []


def parse_target(name: str, push_by_digest: bool) -> Reference:
    """A push target; a name with neither tag nor digest gets ``latest`` (by digest: none)."""
    try:
        ref = parse_reference(name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid image name {name!r}: {exc}") from None
    if push_by_digest:
        if ref.digest or name.rsplit("/", 1)[-1].count(":"):
            raise InvalidArgument(f"can't push tagged ref {name} by digest")
        ref = Reference(ref.domain, ref.repository)
    return ref


def _worker(ctx: ExportContext) -> Any:
    return ctx.bridge.solver.worker


def registry_client(ctx: ExportContext, refs: list[Reference], insecure: bool) -> RegistryClient:
    """A client with the daemon's registry settings (adjusted for pushing) and the session's
    credentials (anonymous without a session)."""
    config = getattr(_worker(ctx), "config", None)
    registries = push_registries(getattr(config, "registries", None) or {}, refs, insecure=insecure)
    session = ctx.session

    async def credentials(host: str) -> tuple[str, str]:
        if session is None:
            return "", ""
        from buildkitpy.session.auth import credentials as session_credentials

        return await session_credentials(session, host)

    return RegistryClient(registries, credentials)


def validate_attrs(attrs: Mapping[str, str]) -> tuple[ImageExportOptions, Any]:
    """The export options of ``attrs`` (and the image options), or ``InvalidArgument``."""
    from buildkitpy.exporter.imagebuild import ImageOptions

    opts = ImageExportOptions.parse(attrs)
    image_opts = ImageOptions.from_attrs(attrs, default_oci=True)  # BuildKit 0.31+ default
    if opts.name and opts.name != "*":
        for name in target_names(ImageExportOptions(name=opts.name), "", {}):
            parse_target(name, opts.push_by_digest)
    if opts.unpack and opts.store and opts.name and image_opts.rewrite_timestamp:
        raise InvalidArgument('exporter option "rewrite-timestamp" conflicts with "unpack"')
    if opts.push and not opts.name and not opts.dangling_prefix:
        raise InvalidArgument("push=true needs an image name (name=...)")
    return opts, image_opts


async def export(ctx: ExportContext) -> dict[str, str]:
    from buildkitpy.exporter.imagebuild import assemble_image
    from buildkitpy.exporter.imagebuild.config import go_json

    opts, image_opts = validate_attrs(ctx.attrs)
    vertex = "sha256:" + secrets.token_hex(32)
    progress = ctx.progress
    progress.vertex(vertex, "exporting to image", started=True)
    try:
        image = await assemble_image(ctx, image_opts, vertex=vertex)
        root = Descriptor.from_json(image.descriptor, "assembled image")
        names = target_names(opts, root.digest, ctx.result.metadata or {})
        if opts.store and names:
            await anyio.to_thread.run_sync(_record_names, ctx, names, root.digest, opts.name_canonical)
            for name in names:
                progress.status(vertex, f"naming to {name}", name=f"naming to {name}", completed=True)
        if opts.push:
            if not names:
                raise InvalidArgument("push=true needs an image name (name=...)")
            await push_names(ctx, image.store, root, [parse_target(n, opts.push_by_digest) for n in names],
                             opts, vertex)
    except BaseException as exc:
        progress.vertex(vertex, error=str(exc) or type(exc).__name__, completed=True)
        raise
    progress.vertex(vertex, completed=True)
    response = {RESP_DIGEST: root.digest}
    if image.config_digest:
        response[RESP_CONFIG_DIGEST] = image.config_digest
    response[RESP_DESCRIPTOR] = base64.b64encode(go_json(image.descriptor).encode()).decode()
    if names:
        response[RESP_NAME] = ",".join(names)
    return response


def _record_names(ctx: ExportContext, names: list[str], digest: str, canonical: bool) -> list[str]:
    """Give the image its names in the worker's image records (blocking): ``image-resolve-mode=local``
    (and ``default`` when the registry fails) then finds it by name."""
    from buildkitpy.image.resolvemode import record_exported_names

    refs = []
    for name in names:
        try:
            refs.append(parse_reference(name))
        except InvalidArgument:
            continue  # e.g. a dangling-name prefix that is no reference: reported, not recorded
    return record_exported_names(_worker(ctx).image_puller.chains, refs, digest, canonical)


async def push_names(ctx: ExportContext, store: Any, root: Descriptor, refs: list[Reference],
                     opts: ImageExportOptions, vertex: str) -> None:
    client = registry_client(ctx, refs, opts.insecure)
    progress = ctx.progress
    # As buildctl shows BuildKit's push: one "pushing layers" status, then "pushing manifest for
    # <name>@<digest>" (per name).
    pusher = ImagePusher(client, store)
    for ref in refs:
        shown = str(ref) if ref.digest else f"{ref}@{root.digest}"
        progress.status(vertex, "pushing layers", name="pushing layers")
        try:
            await pusher.push(ref, root)
        except BuildkitpyError as exc:
            if isinstance(exc, SolveError):
                raise
            raise type(exc)(f"failed to push {shown}: {exc}") from exc
        progress.status(vertex, "pushing layers", name="pushing layers", completed=True)
        status = f"pushing manifest for {shown}"
        progress.status(vertex, status, name=status, completed=True)
