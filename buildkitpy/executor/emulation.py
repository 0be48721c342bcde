"""Which platforms this machine can run: the host's own, and others through binfmt_misc emulation.

Like BuildKit's ``archutil``, we find out by running a tiny program per platform: a static ELF that
only calls ``exit(0)``. The host runs its own and compatible architectures natively (amd64 runs
386); any other architecture runs only when the kernel hands it to an interpreter registered in
binfmt_misc (Debian's ``qemu-user-static``; see the README). The probes are generated here, a
handful of machine instructions wrapped in an ELF header, so nothing prebuilt is shipped.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0  # seconds; an emulator that hangs counts as missing


@dataclass(frozen=True)
class Probe:
    platform: str  # os/arch[/variant], as BuildKit writes it
    machine: int  # ELF e_machine
    bits: int  # 32 or 64
    big_endian: bool
    code: bytes  # exit(0)
    flags: int = 0  # ELF e_flags


def _words(fmt: str, *words: int) -> bytes:
    return b"".join(struct.pack(fmt, w) for w in words)


PROBES: tuple[Probe, ...] = (
    # mov x0, #0; mov x8, #93 (exit); svc #0
    Probe("linux/arm64", 183, 64, False, _words("<I", 0xD2800000, 0xD2800BA8, 0xD4000001)),
    # mov r0, #0; mov r7, #1 (exit); svc #0 — EABI version 5
    Probe("linux/arm/v7", 40, 32, False, _words("<I", 0xE3A00000, 0xE3A07001, 0xEF000000), 0x05000000),
    Probe("linux/arm/v6", 40, 32, False, _words("<I", 0xE3A00000, 0xE3A07001, 0xEF000000), 0x05000000),
    # li a0, 0; li a7, 93 (exit); ecall — double-float ABI
    Probe("linux/riscv64", 243, 64, False, _words("<I", 0x00000513, 0x05D00893, 0x00000073), 0x0004),
    # li r0, 1 (exit); li r3, 0; sc — ELFv2 ABI
    Probe("linux/ppc64le", 21, 64, False, _words("<I", 0x38000001, 0x38600000, 0x44000002), 0x0002),
    # lghi %r2, 0; svc 1 (exit)
    Probe("linux/s390x", 22, 64, True, bytes.fromhex("a7290000" "0a01")),
    # mov eax, 1 (exit); xor ebx, ebx; int 0x80
    Probe("linux/386", 3, 32, False, bytes.fromhex("b801000000" "31db" "cd80")),
)


def elf_executable(probe: Probe) -> bytes:
    """A static ELF executable: one loadable segment holding the headers and the code."""
    order = ">" if probe.big_endian else "<"
    base = 0x400000 if probe.bits == 64 else 0x10000
    ident = b"\x7fELF" + bytes([2 if probe.bits == 64 else 1, 2 if probe.big_endian else 1, 1, 0])
    ident = ident.ljust(16, b"\0")
    if probe.bits == 64:
        ehsize, phsize = 64, 56
        entry = base + ehsize + phsize
        size = ehsize + phsize + len(probe.code)
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, probe.machine, 1, entry, ehsize, 0,
                                     probe.flags, ehsize, phsize, 1, 0, 0, 0)
        program = struct.pack(order + "IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    else:
        ehsize, phsize = 52, 32
        entry = base + ehsize + phsize
        size = ehsize + phsize + len(probe.code)
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, probe.machine, 1, entry, ehsize, 0,
                                     probe.flags, ehsize, phsize, 1, 0, 0, 0)
        program = struct.pack(order + "IIIIIIII", 1, 0, base, base, size, size, 5, 0x1000)
    return header + program + probe.code


def runs(probe: Probe, workdir: Path) -> bool:
    """Whether the kernel runs this probe (natively or through a binfmt_misc interpreter)."""
    path = workdir / probe.platform.replace("/", "-")
    path.write_bytes(elf_executable(probe))
    path.chmod(0o755)
    try:
        res = subprocess.run([str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT, env={})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


_AMD64_LEVELS = (
    ("v2", {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}),
    ("v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
)


def amd64_levels(cpuinfo: str) -> list[str]:
    """The x86-64 micro-architecture levels (v2, v3, v4) the CPU flags in ``cpuinfo`` support."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    levels = []
    for name, needed in _AMD64_LEVELS:
        if not needed <= flags:
            break
        levels.append(name)
    return levels


def supported_platforms(host: str, scratch: Path) -> list[str]:
    """``host`` first, then its compatible variants, then every probe platform that runs."""
    out = [host]
    if host == "linux/amd64":
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
        out += [f"linux/amd64/{level}" for level in amd64_levels(cpuinfo)]
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="probe-") as tmp:
        for probe in PROBES:
            if probe.platform in out or probe.platform.startswith(host + "/"):
                continue
            if runs(probe, Path(tmp)):
                out.append(probe.platform)
            else:
                log.debug("platform %s does not run here (no binfmt_misc emulator?)", probe.platform)
    return out


def binfmt_misc_mounted() -> bool:
    return os.path.exists("/proc/sys/fs/binfmt_misc/status")
