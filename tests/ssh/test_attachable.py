"""The client's SSH attachable on a real gRPC server over a unix socket, in front of a real
``ssh-agent``: CheckAgent by id, the read-only filter frame by frame, and malformed input."""

from __future__ import annotations

import struct

import grpc
import pytest

from buildkitpy.api import ssh_pb2, ssh_pb2_grpc
from buildkitpy.session.sshforward import KEY_SSH_ID, AgentConfig, SSHAttachable
from tests.ssh.conftest import KEY_COMMENT

pytestmark = pytest.mark.anyio


def frame(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">I", 1 + len(body)) + bytes([kind]) + body


@pytest.fixture
async def stub(start_agent, tmp_path):
    agent = start_agent()
    attachable = SSHAttachable([AgentConfig("default", [str(agent.sock)]),
                                AgentConfig("raw", [str(agent.sock)], raw=True)])
    server = grpc.aio.server()
    attachable.add_to_server(server)
    addr = f"unix://{tmp_path}/grpc.sock"
    server.add_insecure_port(addr)
    await server.start()
    async with grpc.aio.insecure_channel(addr) as channel:
        yield ssh_pb2_grpc.SSHStub(channel)
    await server.stop(None)
    attachable.close()


async def exchange(stub, agent_id: str, *requests: bytes) -> list[bytes]:
    call = stub.ForwardAgent(metadata=((KEY_SSH_ID, agent_id),))
    replies = []
    for req in requests:
        await call.write(ssh_pb2.BytesMessage(data=req))
        msg = await call.read()
        if msg is grpc.aio.EOF:
            break
        replies.append(msg.data)
    await call.done_writing()
    return replies


async def test_check_agent_by_id(stub):
    await stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID="default"))
    await stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID=""))  # empty means default
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "unset ssh forward key nope"


async def test_read_only_filter(stub):
    identities, removed, locked, ext = await exchange(
        stub, "default", frame(11), frame(19), frame(22, struct.pack(">I", 1) + b"p"),
        frame(27, struct.pack(">I", 4) + b"test"))
    assert identities[4] == 12 and KEY_COMMENT.encode() in identities  # SSH_AGENT_IDENTITIES_ANSWER
    assert removed == locked == ext == frame(5)  # SSH_AGENT_FAILURE, never reaching the agent
    # requests split across messages are reassembled; two in one message get two answers
    request = frame(11) + frame(11)
    call = stub.ForwardAgent(metadata=((KEY_SSH_ID, "default"),))
    await call.write(ssh_pb2.BytesMessage(data=request[:3]))
    await call.write(ssh_pb2.BytesMessage(data=request[3:]))
    first, second = await call.read(), await call.read()
    assert first.data == second.data == identities
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def test_oversized_frame_ends_the_stream(stub):
    assert await exchange(stub, "default", struct.pack(">I", 10 * 1024 * 1024) + b"\x0b") == []


async def test_unknown_id_in_metadata(stub):
    call = stub.ForwardAgent(metadata=((KEY_SSH_ID, "nope"),))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.details() == "unset ssh forward key nope"


async def test_raw_mode_reaches_the_agent(stub):
    (removed,) = await exchange(stub, "raw", frame(19))
    assert removed == frame(6)  # SSH_AGENT_SUCCESS: the agent itself removed the keys
    (identities,) = await exchange(stub, "default", frame(11))
    assert identities == struct.pack(">IBI", 5, 12, 0)
