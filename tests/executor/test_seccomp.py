"""The default seccomp profile: the Docker-format converter, and the converted profile under real runc."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from buildkitpy.executor import ExecSpec, NetworkMode, SecurityMode, seccomp
from buildkitpy.executor.oci import DEFAULT_CAPABILITIES, build_config
from buildkitpy.executor.runc import RuncExecutor
from buildkitpy.executor.seccomp import SeccompProfileError, convert
from buildkitpy.executor.user import ResolvedUser


@pytest.fixture
def anyio_backend():
    return "asyncio"


needs_profile = pytest.mark.skipif(not seccomp.PROFILE_PATH.is_file(),
                                   reason="golang-github-containers-common is not installed")


def names_with(profile: dict, action: str, *, conditional: bool = False) -> set[str]:
    return {n for rule in profile["syscalls"]
            if rule["action"] == action and bool(rule.get("args")) == conditional for n in rule["names"]}


# ------------------------------------------------------------------ converter semantics

SAMPLE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": None},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "",
         "includes": {}, "excludes": {}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "errno": "EPERM",
         "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["both_caps"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_A", "CAP_B"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["old_only"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.10"}},
        {"name": "personality", "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errno": "EINVAL", "args": None},
    ],
}


def test_arch_map_picks_the_host_architecture_and_its_sub_architectures():
    assert convert(SAMPLE, [], machine="x86_64", kernel=(6, 1))["architectures"] == [
        "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert convert(SAMPLE, [], machine="aarch64", kernel=(6, 1))["architectures"] == [
        "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert convert(SAMPLE, [], machine="riscv64", kernel=(6, 1))["architectures"] == ["SCMP_ARCH_RISCV64"]
    assert "architectures" not in convert(SAMPLE, [], machine="ppc64le", kernel=(6, 1))


def test_includes_and_excludes_are_evaluated_against_arch_caps_and_kernel():
    plain = convert(SAMPLE, [], machine="x86_64", kernel=(4, 4))
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO" and plain["defaultErrnoRet"] == 38
    allowed = names_with(plain, "SCMP_ACT_ALLOW")
    assert allowed == {"read", "write", "arch_prctl", "old_only"}
    assert names_with(plain, "SCMP_ACT_ERRNO") == {"chroot", "socket"}
    chroot_refusal = next(r for r in plain["syscalls"] if r["names"] == ["chroot"])
    assert chroot_refusal == {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    socket_rule = next(r for r in plain["syscalls"] if r["names"] == ["socket"])
    assert socket_rule["errnoRet"] == errno.EINVAL and "args" not in socket_rule  # errno by name, null args

    granted = convert(SAMPLE, ["CAP_SYS_CHROOT", "CAP_A", "CAP_B"], machine="aarch64", kernel=(6, 1))
    assert names_with(granted, "SCMP_ACT_ALLOW") == {"read", "write", "set_tls", "chroot", "both_caps",
                                                     "ptrace"}
    assert names_with(granted, "SCMP_ACT_ERRNO") == {"socket"}
    # every capability of includes.caps is needed, not just one
    assert "both_caps" not in names_with(convert(SAMPLE, ["CAP_A"], machine="x86_64", kernel=(6, 1)),
                                         "SCMP_ACT_ALLOW")
    # minKernel compares major.minor numerically (5.10 > 5.9)
    for kernel, kept in (((5, 9), True), ((5, 10), False)):
        profile = convert(SAMPLE, [], machine="x86_64", kernel=kernel)
        assert ("old_only" in names_with(profile, "SCMP_ACT_ALLOW")) is kept


def test_rules_come_out_in_oci_runtime_spec_form():
    out = convert(SAMPLE, [], machine="x86_64", kernel=(6, 1))
    personality = next(r for r in out["syscalls"] if r["names"] == ["personality"])
    assert personality == {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                           "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
    for rule in out["syscalls"]:
        assert set(rule) <= {"names", "action", "errnoRet", "args"}
        if rule["action"] == "SCMP_ACT_ALLOW":
            assert "errnoRet" not in rule


@pytest.mark.parametrize("broken, message", [
    ({"syscalls": []}, "defaultAction"),
    ({**SAMPLE, "architectures": ["SCMP_ARCH_X86_64"]}, "both 'architectures' and 'archMap'"),
    ({**SAMPLE, "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]},
     "both 'name' and 'names'"),
    ({**SAMPLE, "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}, "syscall names"),
    ({**SAMPLE, "syscalls": [{"names": ["read"]}]}, r"syscalls\[0\] \(read, ...\) has no action"),
    ({**SAMPLE, "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO", "errno": "ENOTANERRNO"}]},
     "ENOTANERRNO"),
    ({**SAMPLE, "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]},
     "minKernel 'new'"),
    ({**SAMPLE, "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"value": 1}]}]},
     "needs index and op"),
    ({**SAMPLE, "syscalls": {"names": ["x"]}}, "syscalls must be a list"),
])
def test_bad_profiles_are_clear_errors(broken, message):
    with pytest.raises(SeccompProfileError, match=message):
        convert(broken, [], machine="x86_64", kernel=(6, 1))


def test_unreadable_profile_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "seccomp.json"
    bad.write_text("{not json")
    with pytest.raises(SeccompProfileError, match=str(bad)):
        seccomp.load_docker_profile(bad)
    bad.write_text("[]")
    with pytest.raises(SeccompProfileError, match="expected a JSON object, got list"):
        seccomp.load_docker_profile(bad)


# ------------------------------------------------------------------ the default profile

@needs_profile
def test_default_profile_is_an_allow_list_for_the_host():
    profile = seccomp.default_profile(DEFAULT_CAPABILITIES)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert isinstance(profile["defaultErrnoRet"], int)
    if os.uname().machine == "x86_64":  # x32 only where the kernel runs it: see the runc test below
        x32 = ["SCMP_ARCH_X32"] if seccomp.kernel_runs_x32() else []
        assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", *x32]
        assert "arch_prctl" in names_with(profile, "SCMP_ACT_ALLOW")
    allowed = names_with(profile, "SCMP_ACT_ALLOW")
    assert {"read", "openat", "execve", "fork", "wait4", "socket"} <= allowed
    assert "chroot" in allowed  # granted CAP_SYS_CHROOT
    refused = names_with(profile, "SCMP_ACT_ERRNO")
    assert not allowed & {"unshare", "setns", "mount", "umount2", "keyctl", "pivot_root", "bpf", "reboot"}
    assert {"unshare", "setns", "mount", "keyctl", "bpf", "init_module", "acct"} <= refused
    assert "clone" in names_with(profile, "SCMP_ACT_ALLOW", conditional=True)


@needs_profile
def test_capabilities_unlock_their_syscalls():
    base = seccomp.default_profile(DEFAULT_CAPABILITIES)
    admin = seccomp.default_profile([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_TIME"])
    unlocked = names_with(admin, "SCMP_ACT_ALLOW") - names_with(base, "SCMP_ACT_ALLOW")
    assert {"unshare", "setns", "mount", "umount2", "keyctl", "clone", "clone3", "bpf",
            "settimeofday"} <= unlocked
    assert not names_with(admin, "SCMP_ACT_ERRNO") & unlocked
    no_chroot = seccomp.default_profile([c for c in DEFAULT_CAPABILITIES if c != "CAP_SYS_CHROOT"])
    assert "chroot" in names_with(no_chroot, "SCMP_ACT_ERRNO") - names_with(no_chroot, "SCMP_ACT_ALLOW")


@needs_profile
def test_converted_profile_is_cached_per_capability_set_and_callers_get_a_copy():
    seccomp._cached_default.cache_clear()
    first = seccomp.default_profile(DEFAULT_CAPABILITIES)
    first["syscalls"].clear()
    again = seccomp.default_profile(list(reversed(DEFAULT_CAPABILITIES)))
    assert again["syscalls"], "a caller's change leaked into the cache"
    seccomp.default_profile([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    info = seccomp._cached_default.cache_info()
    assert (info.hits, info.misses) == (1, 2)


def test_missing_profile_file_falls_back_to_the_deny_list_and_warns_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(seccomp, "PROFILE_PATH", tmp_path / "absent.json")
    seccomp._cached_default.cache_clear()
    seccomp._warn_fallback.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=seccomp.__name__):
            profile = seccomp.default_profile(DEFAULT_CAPABILITIES)
            seccomp.default_profile([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
        assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
        assert {"unshare", "mount", "keyctl"} <= names_with(profile, "SCMP_ACT_ERRNO")
        warnings = [r for r in caplog.records if "absent.json is missing" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        seccomp._cached_default.cache_clear()


# ------------------------------------------------------------------ under real runc

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs one syscall in a child; prints "<name> <errno>" (0: it succeeded). */
static int attempt(const char *what) {
    long r = -1;
    if (!strcmp(what, "keyctl")) r = syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 1);
    else if (!strcmp(what, "unshare-user")) r = unshare(CLONE_NEWUSER);
    else if (!strcmp(what, "mount")) {
        mkdir("/probe-mnt", 0755);
        r = mount("none", "/probe-mnt", "tmpfs", 0, 0);
    }
    else if (!strcmp(what, "clone-newns")) {
        r = syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) waitpid(r, 0, 0);
    }
    else if (!strcmp(what, "clone3")) r = syscall(SYS_clone3, 0, 0);
    else if (!strcmp(what, "fork")) { r = fork(); if (r == 0) _exit(0); if (r > 0) waitpid(r, 0, 0); }
#ifdef __x86_64__
    else if (!strcmp(what, "x32-getpid")) r = syscall(0x40000000L | 39);  /* getpid, x32 ABI */
    else if (!strcmp(what, "i386-getpid")) {  /* getpid through the 32-bit entry (i386 table: 20) */
        long ret;
        __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
        if (ret < 0) { errno = (int)-ret; r = -1; } else r = ret;
    }
#endif
    else { fprintf(stderr, "unknown probe %s\n", what); return 2; }
    return r < 0 ? errno : 0;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        pid_t pid = fork();
        if (pid == 0) _exit(attempt(argv[i]));
        int status = 0;
        waitpid(pid, &status, 0);
        printf("%s %d\n", argv[i], WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    }
    return 0;
}
"""

PROBES = ["fork", "keyctl", "unshare-user", "mount", "clone-newns", "clone3"]
X86_PROBES = ["x32-getpid", "i386-getpid"]  # x86_64 only


@pytest.fixture(scope="module")
def probe_binary(tmp_path_factory) -> Path:
    """A static probe program making the syscalls under test (busybox has no keyctl or raw clone)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("probe")
    (out / "probe.c").write_text(PROBE_C)
    built = subprocess.run(["gcc", "-static", "-O1", "-o", str(out / "sysprobe"), str(out / "probe.c")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot link a static probe (libc6-dev missing?): {built.stderr.strip()}")
    return out / "sysprobe"


def runc_run(bundle_root: Path, rootfs: Path, script: str, *, capabilities: list[str],
             seccomp_profile: dict | None, network: NetworkMode = NetworkMode.NONE) -> tuple[int, str]:
    """Run ``script`` under real runc with our OCI config, but a chosen capability set and profile."""
    bundle = bundle_root / "bundle"
    bundle.mkdir()
    hosts, resolv = bundle / "hosts", bundle / "resolv.conf"
    hosts.write_text("127.0.0.1 localhost\n")
    resolv.write_text("nameserver 192.0.2.1\n")
    config = build_config(ExecSpec(rootfs=rootfs, args=["/bin/sh", "-c", script], network=network),
                          ResolvedUser(0, 0, ()), hosts_file=hosts, resolv_conf=resolv, rootfs=rootfs)
    config["process"]["capabilities"] = {k: capabilities for k in ("bounding", "effective", "permitted")}
    config["linux"].pop("seccomp", None)
    if seccomp_profile is not None:
        config["linux"]["seccomp"] = seccomp_profile
    (bundle / "config.json").write_text(json.dumps(config))
    name = "seccomp-test-" + os.urandom(4).hex()
    state = bundle_root / "state"
    try:
        done = subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle), name],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", name], capture_output=True)
    return done.returncode, done.stdout + done.stderr


def probe_results(output: str) -> dict[str, str]:
    results = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in PROBES + X86_PROBES and parts[1].isdigit():
            number = int(parts[1])
            if number > 128:  # killed by a signal
                results[parts[0]] = signal.Signals(number - 128).name
            else:
                results[parts[0]] = "OK" if number == 0 else errno.errorcode.get(number, parts[1])
    return results


SMOKE = r"""
set -eu
cd /tmp
echo hello > a.txt && cp a.txt b.txt && mv b.txt c.txt && ln -s c.txt d.txt && ln c.txt e.txt
test "$(cat d.txt)" = hello
ls -la / > /dev/null && ls -lR /etc > /dev/null
mkdir -p tree/sub && seq 1 200 > tree/sub/n && chmod 640 tree/sub/n && chown 1000:1000 tree/sub/n
touch -d '2020-01-01 00:00:00' tree/old && stat -c '%U %a' tree/sub/n
tar -cf t.tar tree && mkdir untar && tar -xf t.tar -C untar && test -f untar/tree/sub/n
tar -czf t.tgz tree && gzip -t t.tgz && bzip2 -k a.txt && xz -k a.txt && xzcat a.txt.xz > /dev/null
seq 1 500 | sort -rn | head -1 && shuf -i 1-9 | sort -n | uniq | wc -l
awk 'BEGIN{ s = 0; for (i = 0; i < 10; i++) s += i; print s }' && sed -e 's/hello/bye/' a.txt
find / -xdev -name passwd -type f > /dev/null && xargs echo < a.txt
sha256sum a.txt > /dev/null && md5sum a.txt > /dev/null
dd if=/dev/zero of=z bs=4k count=16 2>/dev/null && truncate -s 1M z && du -k z > /dev/null
date > /dev/null && date -d @0 -u && uname -a > /dev/null && id && whoami && nproc && free > /dev/null
df > /dev/null && ps > /dev/null && top -b -n 1 > /dev/null && uptime > /dev/null
wget --help > /dev/null 2>&1 || true
mkfifo fifo && (echo via-fifo > fifo &) && cat fifo
sleep 0.1 && timeout 5 sleep 0.1 && nice -n 5 true && renice -n 1 $$ > /dev/null
mknod nul c 1 3 && echo x > nul
chroot / true
su -s /bin/sh nobody -c id
echo 'int' | diff - a.txt > /dev/null || true
ping -c 1 -W 2 127.0.0.1 > /dev/null
(sleep 5 & kill $!) && trap 'echo trapped' USR1 && kill -USR1 $$
printf 'x\n' | tee t.out > /dev/null && test "$(cat t.out)" = x
echo SMOKE-OK
"""


@pytest.mark.root
@pytest.mark.anyio
async def test_busybox_smoke_script_runs_under_the_default_profile(rootfs, tmp_path):
    executor = RuncExecutor(tmp_path / "executor")
    out, err = bytearray(), bytearray()
    script = SMOKE + "grep Seccomp: /proc/self/status"
    code = await executor.run(ExecSpec(rootfs=rootfs, args=["/bin/sh", "-c", script]),
                              stdout=out.extend, stderr=err.extend)
    text = out.decode() + err.decode()
    assert code == 0, text
    assert "SMOKE-OK" in text and "trapped" in text and "via-fifo" in text
    assert "Seccomp:\t2" in text


@pytest.mark.root
@pytest.mark.anyio
async def test_sandbox_refuses_namespaces_mounts_keyrings_and_links(rootfs, tmp_path, probe_binary):
    shutil.copy2(probe_binary, rootfs / "bin" / "sysprobe")
    executor = RuncExecutor(tmp_path / "executor")
    out = bytearray()
    script = ("/bin/sysprobe " + " ".join(PROBES) + "; mkdir -p /mnt; "
              "unshare -U true || echo UNSHARE-REFUSED; "
              "mount -t tmpfs none /mnt || echo MOUNT-REFUSED; "
              "ip link add name bkp0 type bridge || echo LINK-REFUSED")
    spec = ExecSpec(rootfs=rootfs, args=["/bin/sh", "-c", script], network=NetworkMode.NONE)
    code = await executor.run(spec, stdout=out.extend, stderr=out.extend)
    text = out.decode()
    assert code == 0, text
    assert probe_results(text) == {"fork": "OK", "keyctl": "EPERM", "unshare-user": "EPERM", "mount": "EPERM",
                                   "clone-newns": "EPERM", "clone3": "ENOSYS"}, text
    for refused in ("UNSHARE-REFUSED", "MOUNT-REFUSED", "LINK-REFUSED"):
        assert refused in text, text
    assert "unshare(0x10000000): Operation not permitted" in text, text
    assert "mount: permission denied" in text, text  # busybox's wording of EPERM
    assert "RTNETLINK answers: Operation not permitted" in text, text


@needs_profile
@pytest.mark.root
@pytest.mark.anyio
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 and i386 system calls are x86_64's")
async def test_x32_calls_reach_the_kernel_only_where_it_runs_them(rootfs, tmp_path, probe_binary):
    """The filter leaves out x32 where the kernel has no x32 ABI (cheaper for runc to compile): an
    x32 call is then killed (SIGSYS) instead of failing with ENOSYS; i386 calls still run."""
    host = subprocess.run([str(probe_binary), *X86_PROBES], capture_output=True, text=True, check=True)
    on_host = probe_results(host.stdout)
    assert on_host["x32-getpid"] in ("OK", "ENOSYS"), host.stdout
    shutil.copy2(probe_binary, rootfs / "bin" / "sysprobe")
    out = bytearray()
    code = await RuncExecutor(tmp_path / "executor").run(
        ExecSpec(rootfs=rootfs, args=["/bin/sysprobe", *X86_PROBES]), stdout=out.extend, stderr=out.extend)
    text = out.decode()
    assert code == 0, text
    expected_x32 = "OK" if on_host["x32-getpid"] == "OK" else "SIGSYS"
    assert probe_results(text) == {"x32-getpid": expected_x32, "i386-getpid": on_host["i386-getpid"]}, text


@pytest.mark.root
def test_without_the_profile_the_same_capabilities_allow_user_namespaces_and_keyrings(rootfs, tmp_path,
                                                                                    probe_binary):
    """Control: what the sandbox test refuses is refused by the seccomp profile, not by the kernel."""
    shutil.copy2(probe_binary, rootfs / "bin" / "sysprobe")
    code, text = runc_run(tmp_path, rootfs, "/bin/sysprobe " + " ".join(PROBES),
                          capabilities=list(DEFAULT_CAPABILITIES), seccomp_profile=None)
    assert code == 0, text
    results = probe_results(text)
    assert results["keyctl"] == "OK" and results["unshare-user"] == "OK", text
    assert results["clone3"] != "ENOSYS", text


@needs_profile
@pytest.mark.root
def test_with_cap_sys_admin_the_profile_does_not_block_them(rootfs, tmp_path, probe_binary):
    shutil.copy2(probe_binary, rootfs / "bin" / "sysprobe")
    caps = [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]
    script = ("/bin/sysprobe " + " ".join(PROBES) + " && mkdir -p /mnt && "
              "unshare -U true && echo UNSHARED && mount -t tmpfs none /mnt && echo MOUNTED && "
              "ip link add name bkp0 type bridge && echo LINKED; "
              "grep Seccomp: /proc/self/status")
    code, text = runc_run(tmp_path, rootfs, script, capabilities=caps,
                          seccomp_profile=seccomp.default_profile(caps))
    assert code == 0, text
    results = probe_results(text)
    assert {k: results.get(k) for k in ("fork", "keyctl", "unshare-user", "mount", "clone-newns")} == {
        "fork": "OK", "keyctl": "OK", "unshare-user": "OK", "mount": "OK", "clone-newns": "OK"}, text
    assert results["clone3"] != "ENOSYS", text  # clone3 reaches the kernel (which rejects the NULL args)
    for done in ("UNSHARED", "MOUNTED", "LINKED", "Seccomp:\t2"):
        assert done in text, text


@pytest.mark.root
@pytest.mark.anyio
async def test_insecure_mode_has_no_seccomp(rootfs, tmp_path, probe_binary):
    shutil.copy2(probe_binary, rootfs / "bin" / "sysprobe")
    executor = RuncExecutor(tmp_path / "executor")
    out = bytearray()
    code = await executor.run(
        ExecSpec(rootfs=rootfs, args=["/bin/sh", "-c", "/bin/sysprobe keyctl unshare-user mount; "
                                      "grep Seccomp: /proc/self/status"],
                 security=SecurityMode.INSECURE, network=NetworkMode.NONE),
        stdout=out.extend, stderr=out.extend)
    text = out.decode()
    assert code == 0, text
    assert probe_results(text) == {"keyctl": "OK", "unshare-user": "OK", "mount": "OK"}, text
    assert "Seccomp:\t0" in text


@pytest.mark.root
def test_fallback_deny_list_under_runc_refuses_the_same_and_runs_the_smoke_script(rootfs, tmp_path,
                                                                                   probe_binary):
    shutil.copy2(probe_binary, rootfs / "bin" / "sysprobe")
    profile = seccomp._fallback_profile(DEFAULT_CAPABILITIES)
    code, text = runc_run(tmp_path, rootfs, SMOKE + "/bin/sysprobe " + " ".join(PROBES),
                          capabilities=list(DEFAULT_CAPABILITIES), seccomp_profile=profile)
    assert code == 0 and "SMOKE-OK" in text, text
    assert probe_results(text) == {"fork": "OK", "keyctl": "EPERM", "unshare-user": "EPERM", "mount": "EPERM",
                                   "clone-newns": "EPERM", "clone3": "ENOSYS"}, text
