"""The ``local`` exporter: the result's files go to a directory on the client, over the session's
``FileSend`` attachable (fsutil packets, the client is the receiver)."""

from __future__ import annotations

import secrets
import tempfile
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio

from buildkitpy.exporter import ExportContext
from buildkitpy.fsutil.walk import WalkEntry, WalkMemo, walk
from buildkitpy.session import filesync


@asynccontextmanager
async def mounted(ctx: ExportContext, ref):
    """The result tree of ``ref`` as a local directory (an empty one for scratch)."""
    async with mounted_snapshot(ctx, ref) as (path, _snapshot_id):
        yield path


@asynccontextmanager
async def mounted_snapshot(ctx: ExportContext, ref):
    """``mounted``, with the id of the snapshot mounted (None for scratch)."""
    if ref is None:
        with tempfile.TemporaryDirectory(prefix="buildkitpy-empty-") as empty:
            yield Path(empty), None
        return
    snapshot = await ctx.bridge.evaluate(ref)
    if snapshot is None:
        with tempfile.TemporaryDirectory(prefix="buildkitpy-empty-") as empty:
            yield Path(empty), None
        return
    async with AsyncExitStack() as stack:
        cm = snapshot.mount()
        path = await anyio.to_thread.run_sync(cm.__enter__)
        stack.push_async_callback(anyio.to_thread.run_sync, cm.__exit__, None, None, None)
        yield Path(path), snapshot.id


async def _walked(ctx: ExportContext, snapshot_id: str | None, src: Path) -> list[WalkEntry] | None:
    """The walk of the snapshot at ``src``: remembered by the worker (an immutable snapshot's walk
    is the same every time), made and remembered when it is not; None for no snapshot."""
    if snapshot_id is None:
        return None
    memo: WalkMemo = ctx.bridge.solver.worker.walks
    root = str(src)
    entries = memo.get(snapshot_id, root)
    if entries is None:
        entries = await anyio.to_thread.run_sync(walk, src)
        memo.put(snapshot_id, root, entries)
    return entries


async def _provenance_files(ctx: ExportContext, key: str | None, src: Path, prefix: str,
                            stack: AsyncExitStack) -> list[tuple[str, Path]]:
    """The attestation statements to send with the tree at ``src`` (buildkitpy.attest.files); their
    temporary files live until ``stack`` closes."""
    if ctx.provenance is None or not ctx.provenance.files_wanted():
        return []
    statements = await anyio.to_thread.run_sync(ctx.provenance.statement_files, key, src, ctx.attrs)
    tmpdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="buildkitpy-attest-")))
    out = []
    for i, (name, data) in enumerate(statements):
        tmp = tmpdir / f"statement{i}"
        tmp.write_bytes(data)
        out.append((prefix + name, tmp))
    return out


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
                    extra: list[tuple[str, Path]] = []
                    for key, ref in sorted(result.refs.items()):
                        src = await stack.enter_async_context(mounted(ctx, ref))
                        (Path(split) / key.replace("/", "_")).symlink_to(src)
                        extra += await _provenance_files(ctx, key, src, key.replace("/", "_") + "/",
                                                         stack)
                    await filesync.send_dir(session.channel, Path(split), exporter_id=str(ctx.index),
                                            follow_top_level_symlinks=True, extra_files=extra)
        else:
            ref, key = result.ref, None
            if result.refs is not None and len(result.refs) == 1:
                key, ref = next(iter(result.refs.items()))
            async with mounted_snapshot(ctx, ref) as (src, snapshot_id), AsyncExitStack() as stack:
                extra = await _provenance_files(ctx, key, src, "", stack)
                ctx.progress.status(vertex, "copying files", name="copying files")
                sent = await filesync.send_dir(session.channel, src, exporter_id=str(ctx.index),
                                               extra_files=extra,
                                               walked=await _walked(ctx, snapshot_id, src))
                # The bytes sent as the status's current (buildctl: "copying files 3.00MB"), as BuildKit.
                ctx.progress.status(vertex, "copying files", name="copying files", current=sent.bytes,
                                    completed=True)
    except BaseException as exc:
        ctx.progress.vertex(vertex, error=str(exc) or type(exc).__name__, completed=True)
        raise
    ctx.progress.vertex(vertex, completed=True)
    return {}
