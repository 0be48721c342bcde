"""RuncExecutor running real busybox containers with runc."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from buildkitpy.executor import ExecSpec, HostIP, Mount, NetworkMode, SecurityMode
from buildkitpy.executor.runc import ContainerStartError, RuncExecutor
from buildkitpy.executor.user import UserNotFound

pytestmark = [pytest.mark.root, pytest.mark.anyio]


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Output:
    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.events: list[tuple[float, str, bytes]] = []

    def out(self, chunk: bytes) -> None:
        self.stdout += chunk
        self.events.append((time.monotonic(), "stdout", chunk))

    def err(self, chunk: bytes) -> None:
        self.stderr += chunk
        self.events.append((time.monotonic(), "stderr", chunk))


async def run(executor: RuncExecutor, rootfs: Path, script: str, stdin: bytes | None = None,
              **kw) -> tuple[int, str, str]:
    out = Output()
    code = await executor.run(ExecSpec(rootfs=rootfs, args=["/bin/sh", "-c", script], **kw),
                              stdout=out.out, stderr=out.err, stdin=stdin)
    return code, out.stdout.decode(), out.stderr.decode()


async def test_stdout_stderr_stream_while_running(executor, rootfs):
    out = Output()
    started = time.monotonic()
    code = await executor.run(
        ExecSpec(rootfs=rootfs,
                 args=["/bin/sh", "-c", "echo one; sleep 1; echo two >&2; sleep 0.3; echo three"]),
        stdout=out.out, stderr=out.err)
    finished = time.monotonic()
    assert code == 0
    assert out.stdout == b"one\nthree\n" and out.stderr == b"two\n"
    first = out.events[0]
    assert first[1:] == ("stdout", b"one\n")
    assert first[0] - started < finished - started - 1.0, "output was not streamed before the end"
    assert [e[2] for e in out.events] == [b"one\n", b"two\n", b"three\n"]


async def test_exit_codes(executor, rootfs):
    assert (await run(executor, rootfs, "exit 3"))[0] == 3
    assert (await run(executor, rootfs, "exit 255"))[0] == 255
    assert (await run(executor, rootfs, "true"))[0] == 0


async def test_default_path_and_env(executor, rootfs):
    code, out, _ = await run(executor, rootfs, 'echo "$PATH|$FOO"', env=["FOO=bar"])
    assert out == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|bar\n"
    _, out, _ = await run(executor, rootfs, 'echo "$PATH"', env=["PATH=/bin"])
    assert out == "/bin\n"


async def test_stdin_is_passed(executor, rootfs):
    code, out, _ = await run(executor, rootfs, "cat; echo", stdin=b"from stdin")
    assert (code, out) == (0, "from stdin\n")
    _, out, _ = await run(executor, rootfs, "cat; echo done")
    assert out == "done\n"


@pytest.mark.parametrize("user,expected", [
    ("", "uid=0(root) gid=0(root) groups=0(root),50(staff)"),
    ("builder", "uid=1000(builder) gid=1000(builder) groups=10(wheel),50(staff),1000(builder)"),
    ("1000", "uid=1000(builder) gid=1000(builder) groups=10(wheel),50(staff),1000(builder)"),
    ("1000:50", "uid=1000(builder) gid=50(staff) groups=50(staff)"),
    ("builder:staff", "uid=1000(builder) gid=50(staff) groups=50(staff)"),
    ("nobody", "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"),
    ("4242", "uid=4242 gid=0(root) groups=0(root)"),
])
async def test_user_resolution(executor, rootfs, user, expected):
    code, out, err = await run(executor, rootfs, "id", user=user)
    assert (code, out.strip()) == (0, expected), err


async def test_unknown_user_or_group_is_a_clear_error(executor, rootfs):
    with pytest.raises(UserNotFound, match="unable to find user ghost"):
        await run(executor, rootfs, "id", user="ghost")
    with pytest.raises(UserNotFound, match="unable to find group ghosts"):
        await run(executor, rootfs, "id", user="builder:ghosts")


async def test_missing_working_dir_is_created_for_the_user(executor, rootfs):
    code, out, _ = await run(executor, rootfs, "pwd; touch file", cwd="/work/deep/dir", user="builder")
    assert (code, out) == (0, "/work/deep/dir\n")
    st = os.stat(rootfs / "work/deep/dir")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


async def test_hostname_and_hosts_file(executor, rootfs):
    _, out, _ = await run(executor, rootfs, "hostname; cat /etc/hosts")
    assert out.splitlines()[0] == "buildkitsandbox"
    assert "127.0.0.1\tlocalhost buildkitsandbox" in out
    _, out, _ = await run(executor, rootfs, "hostname; cat /etc/hosts; echo x > /etc/hosts",
                          hostname="custom", extra_hosts=[HostIP("registry.local", "10.1.2.3")])
    lines = out.splitlines()
    assert lines[0] == "custom"
    assert "127.0.0.1\tlocalhost custom" in lines and "10.1.2.3\tregistry.local" in lines
    # the generated files were bind-mounted read-only and their stubs removed afterwards
    assert not (rootfs / "etc/hosts").exists()
    assert not (rootfs / "etc/resolv.conf").exists()


async def test_resolv_conf_drops_loopback_nameservers(executor, rootfs):
    _, out, _ = await run(executor, rootfs, "cat /etc/resolv.conf")
    assert "nameserver" in out
    servers = [line.split()[1] for line in out.splitlines() if line.startswith("nameserver")]
    assert not any(s.startswith("127.") for s in servers)


def _interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line}


async def test_network_none_has_only_loopback_and_host_sees_host(executor, rootfs):
    code, out, _ = await run(executor, rootfs, "cat /proc/net/dev")
    assert code == 0
    assert _interfaces(out) == {"lo"}
    _, out, _ = await run(executor, rootfs, "ip link show lo")
    assert "LOOPBACK,UP" in out
    _, out, _ = await run(executor, rootfs, "cat /proc/net/dev", network=NetworkMode.HOST)
    assert _interfaces(out) == _interfaces(Path("/proc/net/dev").read_text())


async def test_bind_mounts_ro_and_rw(executor, rootfs, tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data").write_text("hello")
    code, out, err = await run(
        executor, rootfs, "cat /in/data; touch /in/new 2>/dev/null && echo WROTE; echo out > /out/result",
        mounts=[Mount.bind(ro, "/in", readonly=True), Mount.bind(rw, "/out")])
    assert (code, out) == (0, "hello"), err
    assert not (ro / "new").exists()
    assert (rw / "result").read_text() == "out\n"
    # the mount targets were stubs: gone from the rootfs afterwards
    assert not (rootfs / "in").exists() and not (rootfs / "out").exists()


async def test_tmpfs_mount_with_size(executor, rootfs):
    code, out, _ = await run(executor, rootfs,
                             "grep ' /scratch ' /proc/mounts; echo x > /scratch/f && cat /scratch/f",
                             mounts=[Mount.tmpfs("/scratch", size=1 << 20)])
    assert code == 0
    assert "tmpfs /scratch tmpfs" in out and "size=1024k" in out
    assert out.endswith("x\n")
    assert not (rootfs / "scratch").exists()


SECURITY_PROBE = "grep -E '^(CapEff|Seccomp):' /proc/self/status; unshare -n true && echo UNSHARED"


async def test_sandbox_and_insecure_security(executor, rootfs):
    _, out, _ = await run(executor, rootfs, SECURITY_PROBE)
    fields = dict(line.split(":\t") for line in out.splitlines() if ":\t" in line)
    assert fields["CapEff"] == "00000000a80425fb"  # Docker/BuildKit default capability set
    assert fields["Seccomp"] == "2"
    assert "UNSHARED" not in out
    _, out, _ = await run(executor, rootfs, SECURITY_PROBE, security=SecurityMode.INSECURE)
    fields = dict(line.split(":\t") for line in out.splitlines() if ":\t" in line)
    status = Path("/proc/self/status").read_text().splitlines()
    ours = next(line for line in status if line.startswith("CapEff"))
    assert fields["CapEff"] == ours.split()[1]  # everything the daemon itself holds
    assert fields["Seccomp"] == "0"
    assert "UNSHARED" in out


async def test_missing_executable_is_a_start_error(executor, rootfs):
    with pytest.raises(ContainerStartError, match="no-such-binary"):
        await executor.run(ExecSpec(rootfs=rootfs, args=["no-such-binary"]), stdout=print, stderr=print)


def _runc_containers(executor: RuncExecutor) -> list[str]:
    out = subprocess.run(["runc", "--root", str(executor.root / "runc-state"), "list", "-q"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _mountinfo(*under: Path) -> set[str]:
    """Mount points below the given folders (other work on the machine may mount elsewhere)."""
    prefixes = tuple(str(p.resolve()) for p in under)
    return {point for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if (point := line.split()[4]).startswith(prefixes)}


def _sleepers(token: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"sleep {token}"], capture_output=True, text=True).stdout.split()


async def test_cancellation_kills_and_cleans_up(executor, rootfs):
    mounts_before = _mountinfo(executor.root, rootfs)
    out = Output()
    token = "4711"  # a duration no other process on the machine is likely to sleep for
    with anyio.move_on_after(1.0) as scope:
        await executor.run(ExecSpec(rootfs=rootfs, args=["sleep", token], mounts=[Mount.tmpfs("/stub/tmp")]),
                           stdout=out.out, stderr=out.err)
    assert scope.cancelled_caught
    deadline = time.monotonic() + 5
    def leftovers() -> bool:
        return bool(_runc_containers(executor) or _mountinfo(executor.root, rootfs) != mounts_before
                    or _sleepers(token))

    while time.monotonic() < deadline and leftovers():
        await anyio.sleep(0.1)
    assert _runc_containers(executor) == []
    assert _mountinfo(executor.root, rootfs) == mounts_before
    assert not (rootfs / "stub").exists()
    assert list((executor.root / "bundles").iterdir()) == []
    assert _sleepers(token) == []


async def test_concurrent_runs_overlap(executor, busybox_snapshots):
    mgr, base_id = busybox_snapshots
    base = mgr.get(base_id)
    muts = [mgr.new_mutable(base) for _ in range(2)]
    try:
        with muts[0].mount() as r1, muts[1].mount() as r2:
            codes = []

            async def one(root: Path) -> None:
                codes.append(await executor.run(ExecSpec(rootfs=root, args=["sleep", "2"]),
                                                stdout=lambda b: None, stderr=lambda b: None))

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, r1)
                tg.start_soon(one, r2)
            assert codes == [0, 0]
            assert time.monotonic() - started < 3.5
    finally:
        for m in muts:
            m.release()
        base.release()


async def test_mount_stub_cleanup_never_leaves_the_rootfs(executor, rootfs, tmp_path):
    """CVE-2024-23652 shape: the step swaps a stub's parent for a symlink to a host path; the
    stub cleanup must not delete the host's (empty) files and dirs it then points at."""
    victim = tmp_path / "victim"
    (victim / "b" / "c").mkdir(parents=True)
    (victim / "b" / "empty-file").touch()
    source_file = tmp_path / "source-file"
    source_file.write_text("bound")
    script = f"cat /a/b/empty-file && mv /a /a.moved && ln -s {victim} /a && echo swapped"
    code, out, err = await run(executor, rootfs, script,
                               mounts=[Mount.tmpfs("/a/b/c"),
                                       Mount.bind(source_file, "/a/b/empty-file", readonly=True)])
    assert out == "boundswapped\n"
    assert code == 0, err
    assert (victim / "b" / "c").is_dir()
    assert (victim / "b" / "empty-file").exists()
    assert os.path.islink(rootfs / "a")  # the step's own symlink is the step's content: kept
    # nothing outside the rootfs was touched and the moved stubs were not followed
    assert (rootfs / "a.moved").is_dir()
