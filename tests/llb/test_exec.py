"""Exec ops: mounts, output indexes, meta fields, caps, and errors."""

from __future__ import annotations

import pytest
from llb_helpers import decode

from buildkitpy import llb
from buildkitpy.api import ops_pb2

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base() -> llb.State:
    return llb.image("busybox").add_env("PATH", "/bin")


def test_run_meta_and_base_caps() -> None:
    st = base().dir("/work").user("nobody").hostname("box")
    run = st.run("echo 'hello world' > /x", env={"A": "1"}, valid_exit_codes=[0, 3])
    d = decode(run.root())
    digest, op = d.head
    meta = op.exec.meta
    assert list(meta.args) == ["echo", "hello world", ">", "/x"]
    assert list(meta.env) == ["PATH=/bin", "A=1"]
    assert (meta.cwd, meta.user, meta.hostname) == ("/work", "nobody", "box")
    assert meta.removeMountStubsRecursive and list(meta.validExitCodes) == [0, 3]
    assert op.platform == ops_pb2.Platform(OS="linux", Architecture="amd64")
    assert list(op.exec.mounts) == [ops_pb2.Mount(input=0, dest="/", output=0)]
    assert d.caps(digest) == {"exec.meta.base", "exec.mount.bind", "exec.validexitcode"}
    # run-only settings do not leak into the result state
    assert run.get_env("A") is None and run.root().get_dir() == "/work"


def test_default_path_follows_the_daemon_caps() -> None:
    st = llb.image("busybox").run(["true"]).root()
    no_caps = decode(st).head[1].exec.meta.env
    assert list(no_caps) == []
    without = decode(st, caps={"file.base"})
    assert list(without.head[1].exec.meta.env) == [DEFAULT_PATH]
    assert "exec.meta.setsdefaultpath" not in without.caps(without.head[0])
    with_cap = decode(st, caps={"exec.meta.setsdefaultpath"})
    assert list(with_cap.head[1].exec.meta.env) == []
    assert "exec.meta.setsdefaultpath" in with_cap.caps(with_cap.head[0])


def test_network_security_and_extras() -> None:
    st = base().network("host").security("insecure").add_ulimit("nofile", 1024, 2048)
    st = st.add_extra_host("db", "10.0.0.2").with_cgroup_parent("/build")
    proxy = ops_pb2.ProxyEnv(http_proxy="http://proxy:3128")
    d = decode(st.run(["true"], proxy_env=proxy, cdi_devices=[("vendor.com/gpu=0", True)]).root())
    digest, op = d.head
    assert op.exec.network == ops_pb2.HOST and op.exec.security == ops_pb2.INSECURE
    meta = op.exec.meta
    assert list(meta.extraHosts) == [ops_pb2.HostIP(Host="db", IP="10.0.0.2")]
    assert list(meta.ulimit) == [ops_pb2.Ulimit(Name="nofile", Soft=1024, Hard=2048)]
    assert meta.cgroupParent == "/build" and meta.proxy_env == proxy
    assert list(op.exec.cdiDevices) == [ops_pb2.CDIDevice(name="vendor.com/gpu=0", optional=True)]
    assert d.caps(digest) == {"exec.meta.base", "exec.mount.bind", "exec.meta.network", "exec.meta.security",
                              "exec.meta.ulimit", "exec.meta.proxyenv", "exec.meta.cdi"}


def test_mounts_are_sorted_inputs_deduplicated_and_outputs_numbered() -> None:
    src = llb.local("ctx", session_id="s")
    run = base().run(["true"], mounts=[
        llb.bind("/z-out", src),                                    # rw with output
        llb.bind("/a-ro", src, selector="/sub", readonly=True),    # readonly: no output
        llb.bind("/m-scratch", llb.scratch()),                     # rw scratch: input -1, output
        llb.bind("/n-nooutput", src, output=False),                 # rw, discarded
        llb.cache("/c", "cache-id", sharing="locked"),
        llb.tmpfs("/t", size=1 << 20),
    ])
    d = decode(run.root())
    digest, op = d.head
    mounts = list(op.exec.mounts)
    assert [m.dest for m in mounts] == ["/", "/a-ro", "/c", "/m-scratch", "/n-nooutput", "/t", "/z-out"]
    assert [(m.input, m.output) for m in mounts] == [(0, 0), (1, -1), (-1, -1), (-1, 1), (1, -1), (-1, -1),
                                                     (1, 2)]
    assert len(op.inputs) == 2  # the local source is one input for three mounts
    assert mounts[1].selector == "/sub" and mounts[1].readonly
    assert mounts[2].mountType == ops_pb2.CACHE
    assert mounts[2].cacheOpt == ops_pb2.CacheOpt(ID="cache-id", sharing=ops_pb2.LOCKED)
    assert mounts[5].mountType == ops_pb2.TMPFS and mounts[5].TmpfsOpt.size == 1 << 20
    assert d.caps(digest) == {"exec.meta.base", "exec.mount.bind", "exec.mount.selector", "exec.mount.cache",
                              "exec.mount.cache.sharing", "exec.mount.tmpfs", "exec.mount.tmpfs.size"}

    # get_mount: each writable mount is an output of the exec op, a readonly one is its source
    out = decode(run.get_mount("/z-out"))
    assert out.terminal.inputs[0] == ops_pb2.Input(digest=digest, index=2)
    assert decode(run.get_mount("/m-scratch")).terminal.inputs[0].index == 1
    assert run.get_mount("/a-ro").output is src.output
    for target, reason in (("/t", "tmpfs mount for /t can't be used as a parent"),
                           ("/n-nooutput", "no-output"), ("/c", "has no output")):
        with pytest.raises(llb.LLBError, match=reason):
            llb.marshal(run.get_mount(target).file(llb.mkdir("/x", 0o755)))
    with pytest.raises(llb.LLBError, match="no mount at /nope"):
        run.get_mount("/nope")


def test_empty_tmpfs_and_cache_options_are_still_present() -> None:
    d = decode(base().run(["true"], mounts=[llb.tmpfs("/t"), llb.cache("/c", "id")]).root())
    _, op = d.head
    tmp = [m for m in op.exec.mounts if m.dest == "/t"][0]
    cache = [m for m in op.exec.mounts if m.dest == "/c"][0]
    assert tmp.HasField("TmpfsOpt") and cache.HasField("cacheOpt")


def test_readonly_rootfs_result_is_the_base() -> None:
    st = base()
    run = st.run(["true"], readonly_rootfs=True, mounts=[llb.bind("/out", llb.scratch())])
    assert run.root().output is st.output
    d = decode(run.get_mount("/out"))
    _, op = d.head
    assert [(m.dest, m.readonly, m.output) for m in op.exec.mounts] == [("/", True, -1), ("/out", False, 0)]


def test_secrets_and_ssh() -> None:
    run = base().run(["true"], mounts=[
        llb.secret("tok", target="/run/secrets/tok", mode=0o440, uid=1, gid=2),
        llb.secret("api", env="API_KEY", optional=True),
        llb.ssh(id="default"),
        llb.ssh(target="/ssh2", optional=True),
    ])
    d = decode(run.root())
    digest, op = d.head
    assert list(op.exec.secretenv) == [ops_pb2.SecretEnv(ID="api", name="API_KEY", optional=True)]
    secret, ssh1, ssh2 = list(op.exec.mounts)[1:]
    assert secret == ops_pb2.Mount(input=-1, dest="/run/secrets/tok", mountType=ops_pb2.SECRET,
                                   secretOpt=ops_pb2.SecretOpt(ID="tok", uid=1, gid=2, mode=0o440))
    assert (ssh1.dest, ssh1.SSHOpt.ID, ssh1.SSHOpt.mode) == ("/run/buildkit/ssh_agent.0", "default", 0o600)
    assert ssh2.dest == "/ssh2" and ssh2.SSHOpt.optional
    assert "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0" in op.exec.meta.env
    assert d.caps(digest) == {"exec.meta.base", "exec.mount.bind", "exec.mount.secret", "exec.secretenv",
                              "exec.mount.ssh"}


def test_run_on_scratch_has_no_bind_cap_and_uses_the_state_platform() -> None:
    st = llb.scratch().with_platform("linux/arm/v7")
    d = decode(st.run(["/bin/true"]).root())
    digest, op = d.head
    assert list(op.inputs) == [] and op.exec.mounts[0].input == -1
    assert op.platform == ops_pb2.Platform(OS="linux", Architecture="arm", Variant="v7")
    assert d.caps(digest) == {"exec.meta.base"}


@pytest.mark.parametrize("call,reason", [
    (lambda: llb.marshal(llb.image("busybox").run([]).root()), "arguments are required"),
    (lambda: llb.image("busybox").run(["x"], mounts=["/tmp"]), "not a mount"),
    (lambda: llb.image("busybox").run(["x"], network="bridge"), "invalid network mode 'bridge'"),
    (lambda: llb.image("busybox").security("root"), "invalid security mode"),
    (lambda: llb.image("busybox").run(["x"], mounts=[llb.Mount("/t", llb.image("busybox"), tmpfs=True)]),
     "tmpfs mounts must use scratch"),
    (lambda: llb.cache("/c", ""), "id can't be empty"),
    (lambda: llb.cache("/c", "x", sharing="exclusive"), "invalid sharing"),
    (lambda: llb.secret("s"), "target path, an env name"),
    (lambda: llb.image("busybox").run(["x"], bogus=1), "unknown op option"),
])
def test_bad_run_input_names_the_cause(call, reason: str) -> None:
    with pytest.raises((llb.LLBError, ValueError, TypeError), match=reason):
        call()
