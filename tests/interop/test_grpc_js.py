"""The daemon against a second, independent gRPC stack: grpc-js (pure JavaScript HTTP/2) with
protobufjs decoding our .proto files. Guards the claim that clients in any language work, not just
ones built on grpcio's C core like our own client. Needs Node.js and `npm ci` in tests/interop
(hack/setup does it)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import google.rpc
import pytest

from buildkitpy import llb
from buildkitpy.api import control_pb2

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GOOGLE_PROTOS = Path(google.rpc.__path__[0]).parents[1]  # the folder holding google/rpc/status.proto

pytestmark = pytest.mark.skipif(shutil.which("node") is None or not (HERE / "node_modules").is_dir(),
                                reason="needs Node.js and tests/interop/node_modules (hack/setup)")


def node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(HERE / "client.js"), *args], capture_output=True, text=True,
                          timeout=60, cwd=HERE)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_list_workers_and_info(daemon, transport):
    addr = daemon.unix_addr.replace("unix://", "unix:") if transport == "unix" else \
        daemon.tcp_addr.removeprefix("tcp://")
    res = node(addr, str(REPO / "proto"), str(GOOGLE_PROTOS), "workers")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)["record"][0]
    assert record["Labels"]["org.mobyproject.buildkit.worker.executor"] == "oci"
    assert record["platforms"][0]["OS"] == "linux"
    res = node(addr, str(REPO / "proto"), str(GOOGLE_PROTOS), "info")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["buildkitVersion"]["version"] == "0.1.0"


def test_solve_and_status_stream(daemon, tmp_path):
    definition = llb.scratch().file(llb.mkfile("/grpc-js", 0o644, b"from javascript\n")).marshal()
    ref = "grpcjs" + tmp_path.name[-12:].replace("_", "")
    request = control_pb2.SolveRequest(Ref=ref, Definition=definition)
    req_file = tmp_path / "solve.bin"
    req_file.write_bytes(request.SerializeToString())
    (tmp_path / "solve.bin.json").write_text(json.dumps({"ref": ref}))
    res = node(daemon.tcp_addr.removeprefix("tcp://"), str(REPO / "proto"), str(GOOGLE_PROTOS), "solve",
               str(req_file))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    control_pb2.SolveResponse.FromString(base64.b64decode(out["solve"]))
    vertexes = [v for msg in out["status"]
                for v in control_pb2.StatusResponse.FromString(base64.b64decode(msg)).vertexes]
    assert any(v.name == "mkfile /grpc-js" and v.HasField("completed") for v in vertexes), vertexes
