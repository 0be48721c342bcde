"""The ``moby`` exporter (what buildx's docker driver asks for): the image exporter's result, also
recorded in the Engine API's image store under its names, as the Docker Engine's BuildKit stores
builds in the engine's images."""

from __future__ import annotations

from typing import Any

import anyio

from buildkitpy.errors import InvalidArgument
from buildkitpy.exporter import ExportContext

# Attributes BuildKit's moby exporter takes that mean nothing to our image exporter.
_MOBY_ONLY = ("prefer-image-digest",)


async def export(ctx: ExportContext) -> dict[str, str]:
    from buildkitpy.dockerapi import state_dir
    from buildkitpy.dockerapi.imagestore import ImageStore
    from buildkitpy.exporter import image

    attrs = {k: v for k, v in ctx.attrs.items() if k not in _MOBY_ONLY}
    attrs.setdefault("store", "true")
    if attrs.get("name"):  # as the Engine names them ("naming to docker.io/library/app:latest")
        attrs["name"] = ",".join(_normalized(n) for n in attrs["name"].split(",") if n.strip())
    response = await image.export(ExportContext(index=ctx.index, attrs=attrs, result=ctx.result,
                                                bridge=ctx.bridge, session=ctx.session,
                                                progress=ctx.progress))
    config = response.get(image.RESP_CONFIG_DIGEST, "")
    manifest = response.get(image.RESP_DIGEST, "")
    names = [n for n in response.get(image.RESP_NAME, "").split(",") if n]
    worker: Any = ctx.bridge.solver.worker
    single = bool(config)
    if manifest and not config:  # several platforms: the store keeps the host's (the index stays whole)
        puller = worker.image_puller
        config = await anyio.to_thread.run_sync(_host_config, puller.store, manifest)
        if not config:
            raise InvalidArgument("the Docker Engine API's image store keeps one platform of an image, this "
                                  "machine's, and the build made none for it: export with type=oci or "
                                  "type=docker, or push, to keep the other platforms")
    if config and manifest:

        def record() -> None:
            puller = worker.image_puller
            store = ImageStore(state_dir(worker.root), puller.store, puller.chains)
            try:
                store.add(config, manifest)
                for name in names:
                    if "@" not in name:
                        store.tag(config, name)
            finally:
                store.close()

        await anyio.to_thread.run_sync(record)
        if not single:
            return response
        # The store names an image by its config digest (as moby's graphdriver store does), and so
        # does this exporter's image digest: buildx asks for "prefer-image-digest" and then prints
        # (-q) or writes (--iidfile) containerimage.digest, which must be an ID docker resolves.
        response[image.RESP_DIGEST] = config
    return response


def _host_config(content: Any, index_digest: str) -> str:
    """The config digest of the index's image for this machine's platform ("" if it has none)."""
    import json

    from buildkitpy.worker import host_platform

    host = host_platform()
    index = json.loads(content.read(index_digest))
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        if (plat.get("os"), plat.get("architecture")) != (host["os"], host["architecture"]):
            continue
        if host.get("variant") and plat.get("variant", host["variant"]) != host["variant"]:
            continue
        doc = json.loads(content.read(entry["digest"]))
        return str((doc.get("config") or {}).get("digest", ""))
    return ""


def _normalized(name: str) -> str:
    from buildkitpy.dockerapi.imagestore import normalize_tag

    name = name.strip()
    return name if "@" in name else normalize_tag(name)
