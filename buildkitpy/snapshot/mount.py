"""Mounting overlay stacks and bind mounts (mount(2) through libc; needs CAP_SYS_ADMIN).

The kernel copies overlay mount options into one page, so a long ``lowerdir`` list does not fit.
``mount_overlay`` first tries absolute paths, then paths relative to a short base directory (the
mount runs in a helper process whose working directory is that base), and finally stacks
read-only overlays of groups of layers and uses those as the lower dirs.

Writable overlays are mounted ``volatile`` where the kernel has it (5.10+): unmounting an overlay
otherwise syncs its upper dir's whole filesystem (every dirty page of the disk the daemon root is
on, including other builds' and other programs' writes), which took 0.5 s after a 530 MB COPY on
this machine and held the snapshot lock meanwhile. A mutable snapshot's data needs no more
durability than that: the daemon discards unfinished mutables at start (``_recover``), and a
committed snapshot's files reach the disk through the kernel's writeback like any other write.
Overlay leaves a marker in the work dir that refuses the next mount of the same upper dir (it
cannot tell a clean unmount from a crash); we remove it after our own clean unmount.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildkitpy.userns import running_in_user_namespace

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
OVERLAYFS_SUPER_MAGIC = 0x794C7630
MS_RDONLY = 0x1
MS_BIND = 0x1000
MS_REMOUNT = 0x20
MS_REC = 0x4000
MNT_DETACH = 0x2
# Overlay refuses more lower layers than this in one mount (OVL_MAX_STACK).
MAX_LOWERS_PER_MOUNT = 500

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(OSError):
    pass


def sys_mount(source: str, target: str | Path, fstype: str, flags: int = 0, data: str = "") -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount {fstype} on {target} ({data[:200]}): {os.strerror(err)}")


def sys_umount(target: str | Path, *, lazy_on_busy: bool = True) -> None:
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and lazy_on_busy and _libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
        return
    if err in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
        return
    raise MountError(err, f"umount {target}: {os.strerror(err)}")


def bind_mount(source: Path, target: Path, *, readonly: bool) -> None:
    sys_mount(str(source), target, "", MS_BIND | MS_REC)
    if readonly:
        sys_mount("", target, "", MS_BIND | MS_REMOUNT | MS_RDONLY)


def fs_magic(path: Path) -> int:
    """The statfs f_type of the filesystem holding ``path``."""

    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]

    buf = _Statfs()
    _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return buf.f_type & 0xFFFFFFFF


def mounted_under(prefix: Path) -> list[Path]:
    """Mount points at or below ``prefix`` (deepest first), from /proc/self/mountinfo."""
    base = os.path.realpath(prefix)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


_EXTRA_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")
_extra_supported: bool | None = None
_volatile_supported: bool | None = None


@dataclass
class OverlayStack:
    """An overlay mounted at ``target`` plus helper mounts it was built from (unmounted after)."""

    target: Path
    helpers: list[Path] = field(default_factory=list)
    volatile_work: Path | None = None  # the work dir of a volatile mount (its marker goes after)

    def unmount(self) -> None:
        sys_umount(self.target)
        if self.volatile_work is not None:
            marker = self.volatile_work / "work" / "incompat" / "volatile"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker / "dirty")
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(marker)
        for helper in reversed(self.helpers):
            sys_umount(helper)
            try:
                os.rmdir(helper)
            except OSError:
                pass


def _options(lowers: Sequence[str], upper: str | None, work: str | None, extra: bool,
             volatile: bool = False) -> str:
    opts = ["lowerdir=" + ":".join(lowers)]
    if upper is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
        if volatile:
            opts.append("volatile")
    if extra:
        opts += list(_EXTRA_OPTIONS)
    if running_in_user_namespace():
        # unprivileged overlay (kernel 5.11+): markers in user.overlay.*, trusted.* needs privileges
        opts.append("userxattr")
    return ",".join(opts)


def _mount_once(target: Path, lowers_top_first: Sequence[Path], upper: Path | None, work: Path | None,
                base: Path) -> bool:
    """One overlay mount(2) if its options fit a page; False if they do not. A writable one is
    volatile if the kernel has it."""
    global _volatile_supported
    if upper is not None and _volatile_supported is not False:
        try:
            mounted = _mount_once_with(target, lowers_top_first, upper, work, base, volatile=True)
            _volatile_supported = True
            return mounted
        except MountError as exc:
            if exc.errno != errno.EINVAL:
                raise
        mounted = _mount_once_with(target, lowers_top_first, upper, work, base, volatile=False)
        _volatile_supported = False  # the same mount without it worked: the kernel lacks it
        return mounted
    return _mount_once_with(target, lowers_top_first, upper, work, base, volatile=False)


def _volatile_stack(target: Path, upper: Path | None, work: Path | None) -> OverlayStack:
    return OverlayStack(target, volatile_work=work if upper is not None and _volatile_supported else None)


def _mount_once_with(target: Path, lowers_top_first: Sequence[Path], upper: Path | None, work: Path | None,
                     base: Path, *, volatile: bool) -> bool:
    global _extra_supported
    for extra in ((True, False) if _extra_supported is not False else (False,)):
        absolute = _options([str(p) for p in lowers_top_first], str(upper) if upper else None,
                            str(work) if work else None, extra, volatile)
        try:
            if len(absolute) < PAGE_SIZE - 1:
                sys_mount("overlay", target, "overlay", 0, absolute)
            else:
                rel = _options([os.path.relpath(p, base) for p in lowers_top_first],
                               os.path.relpath(upper, base) if upper else None,
                               os.path.relpath(work, base) if work else None, extra, volatile)
                if len(rel) >= PAGE_SIZE - 1:
                    return False
                # mount(8) in a child whose cwd is ``base``: the kernel resolves relative paths
                # against the caller's cwd, and changing our own cwd is not thread-safe.
                proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", rel, str(target)],
                                      cwd=base, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise MountError(errno.EINVAL, f"mount overlay on {target}: {proc.stderr.strip()}")
            if extra:
                _extra_supported = True
            return True
        except MountError as exc:
            if extra and exc.errno == errno.EINVAL:
                continue
            raise
    return True


def mount_overlay(target: Path, lowers: Sequence[Path], *, upper: Path | None = None,
                  work: Path | None = None, base: Path) -> OverlayStack:
    """Mount an overlay of ``lowers`` (lowest first) at ``target``; with ``upper``/``work`` it is
    writable. ``base`` is a short common directory used for relative option paths."""
    if not lowers:
        raise ValueError("an overlay needs at least one lower directory")
    top_first = list(reversed(lowers))
    if len(top_first) <= MAX_LOWERS_PER_MOUNT and _mount_once(target, top_first, upper, work, base):
        return _volatile_stack(target, upper, work)
    # Too long for one page: mount groups of layers as read-only overlays and stack those.
    stack = OverlayStack(target)
    per_layer = len(os.path.relpath(lowers[0], base)) + 1
    group_size = max(2, min(MAX_LOWERS_PER_MOUNT, (PAGE_SIZE - 256) // per_layer))
    grouped: list[Path] = []
    try:
        for i in range(0, len(lowers), group_size):
            group = list(lowers[i:i + group_size])
            if len(group) == 1:
                grouped.append(group[0])
                continue
            helper = target.parent / f"{target.name}.g{i // group_size}"
            helper.mkdir(exist_ok=True)
            if not _mount_once(helper, list(reversed(group)), None, None, base):
                raise MountError(errno.E2BIG, "overlay layer group does not fit in the mount options")
            stack.helpers.append(helper)
            grouped.append(helper)
        if not _mount_once(target, list(reversed(grouped)), upper, work, base):
            raise MountError(errno.E2BIG, f"too many layers ({len(lowers)}) to mount")
        stack.volatile_work = _volatile_stack(target, upper, work).volatile_work
    except BaseException:
        stack.unmount()
        raise
    return stack
