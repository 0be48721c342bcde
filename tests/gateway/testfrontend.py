"""A tiny frontend for the gateway tests, run as a frontend image's entrypoint (LLBBridge over stdio).

The ``mode`` option picks what it does:

- ``bridge``: uses every LLBBridge call a frontend has (Solve with a nested ``dockerfile.v0``,
  ReadFile/ReadDir/StatFile, Evaluate, ResolveImageConfig/ResolveSourceMeta, Inputs, Warn) and
  returns a tree recording what it saw;
- ``exec``: NewContainer on the ``image`` option's rootfs, ExecProcess with stdin/stdout/stderr and
  an exit code, ReleaseContainer; returns the outputs;
- ``leak``: creates a container, starts a long process in it and returns without releasing;
- ``crash`` / ``garbage`` / ``hang`` / ``error``: the failure modes (exit without returning, write
  something that is not gRPC to stdout, never return, return an error).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from buildkitpy import llb
from buildkitpy.api import gateway_pb2, ops_pb2
from buildkitpy.errors import InvalidArgument
from buildkitpy.gateway.bridge import FrontendResult
from buildkitpy.gateway.grpcclient import GrpcClient, run_from_environment


async def _solve_state(client: GrpcClient, state: llb.State):
    return (await client.solve(definition=llb.marshal(state, caps=client.llb_caps))).ref


def _result_tree(files: dict[str, bytes]) -> llb.State:
    st = llb.scratch()
    for name, data in files.items():
        st = st.file(llb.mkfile("/" + name, 0o644, data))
    return st


async def bridge_mode(client: GrpcClient) -> FrontendResult:
    stub = client._stub
    seen: dict[str, object] = {"opts": {k: v for k, v in client.opts.items() if k != "mode"},
                               "env_session": bool(os.environ.get("BUILDKIT_SESSION_ID")),
                               "product": os.environ.get("BUILDKIT_EXPORTEDPRODUCT"),
                               "workers": len(json.loads(os.environ.get("BUILDKIT_WORKERS", "[]"))),
                               "metadata_file": os.path.exists("/run/config/buildkit/metadata/frontend.bin")}
    inputs = await client.inputs()
    seen["inputs"] = sorted(inputs)
    # nested frontend: the in-process dockerfile.v0 on the build's own context
    nested = await client.solve(frontend="dockerfile.v0", frontend_opt={},
                                frontend_inputs={})
    assert nested.ref is not None
    seen["nested_file"] = (await client.read_file(nested.ref.id, "/from-dockerfile")).decode()
    entries = await stub.ReadDir(gateway_pb2.ReadDirRequest(Ref=nested.ref.id, DirPath="/"))
    seen["readdir"] = sorted(e.path for e in entries.entries)
    stat = await stub.StatFile(gateway_pb2.StatFileRequest(Ref=nested.ref.id, Path="/from-dockerfile"))
    seen["stat_size"] = stat.stat.size
    await stub.Evaluate(gateway_pb2.EvaluateRequest(Ref=nested.ref.id))
    digest, config = await client.resolve_image_config(client.opts["image"])
    seen["image_digest"] = digest
    seen["image_os"] = json.loads(config)["os"]
    meta = await stub.ResolveSourceMeta(gateway_pb2.ResolveSourceMetaRequest(
        Source=ops_pb2.SourceOp(identifier="docker-image://" + client.opts["image"])))
    seen["source_meta_digest"] = meta.Image.Digest
    await client.warn(llb.head(nested.ref.definition), "warning from the test frontend")
    files = {"seen.json": json.dumps(seen, sort_keys=True).encode()}
    if "ctx" in inputs:
        ctx_ref = (await client.solve(definition=inputs["ctx"])).ref
        files["input.txt"] = await client.read_file(ctx_ref.id, "/input.txt")
    st = _result_tree(files)
    return FrontendResult(ref=await _solve_state(client, st), metadata={"frontend.test": b"bridge"})


async def _exec(client: GrpcClient, container_id: str, args: list[str], stdin: bytes,
                process_id: str = "p1") -> tuple[int, bytes, bytes]:
    stub = client._stub
    queue: asyncio.Queue[gateway_pb2.ExecMessage | None] = asyncio.Queue()
    await queue.put(gateway_pb2.ExecMessage(ProcessID=process_id, Init=gateway_pb2.InitMessage(
        ContainerID=container_id, Meta=ops_pb2.Meta(args=args, cwd="/"), Fds=[0, 1, 2])))
    await queue.put(gateway_pb2.ExecMessage(ProcessID=process_id,
                                            File=gateway_pb2.FdMessage(Fd=0, Data=stdin)))
    await queue.put(gateway_pb2.ExecMessage(ProcessID=process_id,
                                            File=gateway_pb2.FdMessage(Fd=0, EOF=True)))

    async def requests():
        while (msg := await queue.get()) is not None:
            yield msg

    out, err, code = b"", b"", -1
    call = stub.ExecProcess(requests())
    async for msg in call:
        kind = msg.WhichOneof("Input")
        if kind == "File":
            if msg.File.Fd == 1:
                out += msg.File.Data
            else:
                err += msg.File.Data
        elif kind == "Exit":
            code = msg.Exit.Code
            if msg.Exit.Error.message:
                err += b"ERROR: " + msg.Exit.Error.message.encode()
        elif kind == "Done":
            await queue.put(None)
            break
    return code, out, err


async def exec_mode(client: GrpcClient) -> FrontendResult:
    stub = client._stub
    rootfs = await _solve_state(client, llb.image(client.opts["image"]))
    await stub.NewContainer(gateway_pb2.NewContainerRequest(
        ContainerID="c1", Mounts=[ops_pb2.Mount(dest="/", resultID=rootfs.id, mountType=ops_pb2.BIND),
                                  ops_pb2.Mount(dest="/scratch", mountType=ops_pb2.TMPFS)]))
    code, out, err = await _exec(client, "c1", ["sh", "-c", "cat > /scratch/in; tr a-z A-Z < /scratch/in;"
                                                " echo to-stderr >&2; echo kept > /kept; exit 3"], b"hello\n")
    code2, out2, _ = await _exec(client, "c1", ["cat", "/kept"], b"", process_id="p2")
    bad, _, bad_err = await _exec(client, "nope", ["true"], b"", process_id="p3")
    await stub.ReleaseContainer(gateway_pb2.ReleaseContainerRequest(ContainerID="c1"))
    files = {"code": str(code).encode(), "stdout": out, "stderr": err, "second": out2,
             "second_code": str(code2).encode(), "unknown_code": str(bad).encode(), "unknown_err": bad_err}
    return FrontendResult(ref=await _solve_state(client, _result_tree(files)))


async def leak_mode(client: GrpcClient) -> FrontendResult:
    rootfs = await _solve_state(client, llb.image(client.opts["image"]))
    await client._stub.NewContainer(gateway_pb2.NewContainerRequest(
        ContainerID="leaked", Mounts=[ops_pb2.Mount(dest="/", resultID=rootfs.id)]))
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put(gateway_pb2.ExecMessage(ProcessID="sleeper", Init=gateway_pb2.InitMessage(
        ContainerID="leaked", Meta=ops_pb2.Meta(args=["sleep", "600"], cwd="/"), Fds=[1, 2])))

    async def requests():
        while (msg := await queue.get()) is not None:
            yield msg

    call = client._stub.ExecProcess(requests())
    async for msg in call:
        if msg.WhichOneof("Input") == "Started":
            break
    return FrontendResult(ref=await _solve_state(client, _result_tree({"leak": b"returned\n"})))


async def build(client: GrpcClient) -> FrontendResult:
    mode = client.opts.get("mode", "")
    if mode == "bridge":
        return await bridge_mode(client)
    if mode == "exec":
        return await exec_mode(client)
    if mode == "leak":
        return await leak_mode(client)
    if mode == "error":
        raise InvalidArgument("the test frontend was asked to fail")
    raise InvalidArgument(f"unknown mode {mode!r}")


def main() -> int:
    mode = next((v.split("=", 1)[1] for k, v in os.environ.items()
                 if k.startswith("BUILDKIT_FRONTEND_OPT_") and v.startswith("mode=")), "")
    if mode == "crash":
        print("test frontend: crashing on purpose", file=sys.stderr)
        return 7
    if mode == "garbage":
        sys.stdout.buffer.write(b"this is not HTTP/2 at all\n" * 64)
        sys.stdout.flush()
        time.sleep(600)
        return 0
    if mode == "hang":
        time.sleep(600)
        return 0
    return asyncio.run(run_from_environment(build))


if __name__ == "__main__":
    sys.exit(main())
