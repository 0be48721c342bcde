"""Test helpers: build odd directory trees, compare them exactly, run a transfer in memory."""

from __future__ import annotations

import hashlib
import os
import stat as st
from pathlib import Path

from buildkitpy.fsutil.receiver import Receiver
from buildkitpy.fsutil.sender import Finish, Sender
from buildkitpy.fsutil.walk import WalkEntry

BASE_MTIME = 1_600_000_000_123_456_789


def manifest(root: Path, *, with_owner: bool = True) -> dict[str, tuple]:
    """Everything we promise to preserve, per relative path (hardlinks as 'first path of the inode')."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    root = Path(root)

    def visit(d: Path, prefix: str) -> None:
        for name in sorted(os.listdir(d)):
            p = d / name
            rel = prefix + name
            ls = os.lstat(p)
            fmt = st.S_IFMT(ls.st_mode)
            digest = link = hardlink = dev = None
            if fmt == st.S_IFREG:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                if ls.st_nlink > 1:
                    hardlink = inodes.setdefault((ls.st_dev, ls.st_ino), rel)
            elif fmt == st.S_IFLNK:
                link = os.readlink(p)
            elif fmt in (st.S_IFCHR, st.S_IFBLK):
                dev = (os.major(ls.st_rdev), os.minor(ls.st_rdev))
            owner = (ls.st_uid, ls.st_gid) if with_owner else None
            size = ls.st_size if fmt != st.S_IFDIR else None
            perm = st.S_IMODE(ls.st_mode) if fmt != st.S_IFLNK else None
            out[rel] = (fmt, perm, owner, size, digest, link, hardlink, dev, ls.st_mtime_ns)
            if fmt == st.S_IFDIR:
                visit(p, rel + "/")

    visit(root, "")
    return out


def build_rich_tree(root: Path, *, files: int = 2000, big: int = 5 * 1024 * 1024) -> None:
    """A context with every kind of entry and odd metadata (needs root for chown and devices)."""
    root.mkdir(parents=True, exist_ok=True)
    mtime = BASE_MTIME
    per_dir = 100
    for i in range(files):
        d = root / "many" / f"d{i // per_dir:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(f"file {i}\n".encode() * (i % 7))
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(big))
    (root / "héllo wörld.txt").write_text("non-ascii and spaces\n")
    (root / "日本語").mkdir()
    (root / "日本語" / "ファイル").write_text("x")
    (root / "name with spaces").write_text("spaces")
    # symlinks: relative, dangling, absolute (kept as-is, never followed), to a directory
    os.symlink("big.bin", root / "link-rel")
    os.symlink("does/not/exist", root / "link-dangling")
    os.symlink("/etc/passwd", root / "link-abs")
    os.symlink("many", root / "link-dir")
    # hardlinks, also across directories
    (root / "hl-a").write_text("shared inode\n")
    os.link(root / "hl-a", root / "hl-b")
    os.link(root / "hl-a", root / "many" / "hl-c")
    # odd modes
    (root / "setuid").write_text("#!/bin/sh\n")
    os.chmod(root / "setuid", 0o4755)
    (root / "setgid").write_text("g")
    os.chmod(root / "setgid", 0o2711)
    (root / "mode0000").write_text("nobody may read me")
    os.chmod(root / "mode0000", 0)
    (root / "mode0777").write_text("everyone")
    os.chmod(root / "mode0777", 0o777)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "private").mkdir()
    (root / "private" / "secret").write_text("s")
    os.chmod(root / "private", 0o700)
    (root / "readonly-dir").mkdir()
    (root / "readonly-dir" / "inside").write_text("ro")
    os.chmod(root / "readonly-dir", 0o555)
    os.mkfifo(root / "fifo", 0o640)
    if os.geteuid() == 0:
        os.mknod(root / "chardev", 0o620 | st.S_IFCHR, os.makedev(1, 3))
        os.chown(root / "name with spaces", 1234, 5678)
        os.lchown(root / "link-rel", 4321, 8765)
        os.chown(root / "sticky", 99, 100)
    os.setxattr(root / "empty", "user.buildkitpy", b"xattr value")
    # distinct nanosecond mtimes everywhere, directories last (children change them)
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            paths.append(os.path.join(dirpath, n))
    for p in sorted(paths, key=lambda x: -x.count("/")):
        mtime += 1_000_001
        os.utime(p, ns=(mtime, mtime), follow_symlinks=False)


def pump(sender: Sender, receiver: Receiver) -> None:
    """Run a whole transfer in memory (no sockets): listing, REQ/DATA, FIN both ways."""
    to_sender = []
    for packet in sender.listing():
        to_sender.extend(receiver.receive(packet))
    while to_sender:
        action = sender.receive(to_sender.pop(0))
        if isinstance(action, Finish):
            receiver.receive(action.reply)
            break
        for packet in sender.data_packets(action):
            to_sender.extend(receiver.receive(packet))
    receiver.end_of_stream()


def paths(entries: list[WalkEntry]) -> list[str]:
    return [e.stat.path for e in entries]
