"""The ``local`` exporter: the result's files go to a directory on the client, over the session's
``FileSend`` attachable (fsutil packets, the client is the receiver)."""

from __future__ import annotations

import secrets
import tempfile
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio

from buildkitpy.exporter import ExportContext
from buildkitpy.session import filesync


@asynccontextmanager
async def mounted(ctx: ExportContext, ref):
    """The result tree of ``ref`` as a local directory (an empty one for scratch)."""
    if ref is None:
        with tempfile.TemporaryDirectory(prefix="buildkitpy-empty-") as empty:
            yield Path(empty)
        return
    snapshot = await ctx.bridge.evaluate(ref)
    if snapshot is None:
        with tempfile.TemporaryDirectory(prefix="buildkitpy-empty-") as empty:
            yield Path(empty)
        return
    async with AsyncExitStack() as stack:
        cm = snapshot.mount()
        path = await anyio.to_thread.run_sync(cm.__enter__)
        stack.push_async_callback(anyio.to_thread.run_sync, cm.__exit__, None, None, None)
        yield Path(path)


async def export(ctx: ExportContext) -> dict[str, str]:
    session = ctx.require_session("local")
    vertex = "sha256:" + secrets.token_hex(32)
    ctx.progress.vertex(vertex, "exporting to client directory", started=True)
    try:
        result = ctx.result
        if result.refs is not None and len(result.refs) > 1:
            # Multi-platform: one stream with a top-level directory per platform.
            with tempfile.TemporaryDirectory(prefix="buildkitpy-split-") as split:
                async with AsyncExitStack() as stack:
                    for key, ref in sorted(result.refs.items()):
                        src = await stack.enter_async_context(mounted(ctx, ref))
                        (Path(split) / key.replace("/", "_")).symlink_to(src)
                    await filesync.send_dir(session.channel, Path(split), exporter_id=str(ctx.index),
                                            follow_top_level_symlinks=True)
        else:
            ref = result.ref
            if result.refs is not None and len(result.refs) == 1:
                ref = next(iter(result.refs.values()))
            async with mounted(ctx, ref) as src:
                ctx.progress.status(vertex, "copying files", name="copying files")
                await filesync.send_dir(session.channel, src, exporter_id=str(ctx.index))
                ctx.progress.status(vertex, "copying files", name="copying files", completed=True)
    except BaseException as exc:
        ctx.progress.vertex(vertex, error=str(exc) or type(exc).__name__, completed=True)
        raise
    ctx.progress.vertex(vertex, completed=True)
    return {}
