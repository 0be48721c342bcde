"""Overlay-style layers: computing the changes between two trees and applying a layer to a tree.

A layer is a directory of changed entries. A deletion is a *whiteout* (a character device 0/0 with
the deleted name); a directory whose lower contents are all hidden carries the xattr
``trusted.overlay.opaque=y`` (``user.overlay.opaque=y`` in a user namespace, where overlays are
mounted with ``userxattr``: trusted xattrs need privileges there). This is what overlayfs writes
into an upper dir and what OCI layer tars encode as ``.wh.`` entries, so layers from either source
mean the same thing.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from buildkitpy.userns import running_in_user_namespace

TRUSTED_OPAQUE_XATTR = "trusted.overlay.opaque"
USER_OPAQUE_XATTR = "user.overlay.opaque"
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def opaque_xattr() -> str:
    """The name overlayfs reads opaque markers under on this daemon's mounts."""
    return USER_OPAQUE_XATTR if running_in_user_namespace() else TRUSTED_OPAQUE_XATTR


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: Path | str) -> bool:
    """Whether ``path`` carries an opaque marker, under either name (a layer may come from a root
    or a rootless daemon)."""
    for name in (TRUSTED_OPAQUE_XATTR, USER_OPAQUE_XATTR):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def make_whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            pass
    return out


def _copy_metadata(src: Path, st: os.stat_result, dst: Path) -> None:
    """Owner, mode, xattrs and times of ``src`` onto ``dst`` (no symlink following)."""
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name, value in _xattrs(src).items():
        try:
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError:
            pass
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


class _Copier:
    """Copies single entries, keeping hard links within one operation linked."""

    def __init__(self) -> None:
        self._links: dict[tuple[int, int], Path] = {}

    def copy_entry(self, src: Path, st: os.stat_result, dst: Path) -> None:
        """Copy a non-directory entry (file, symlink, device, fifo, socket, whiteout)."""
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            first = self._links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, dst)
                return
            self._links[(st.st_dev, st.st_ino)] = dst
        mode = st.st_mode
        if stat.S_ISREG(mode):
            shutil.copyfile(src, dst, follow_symlinks=False)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(dst, mode, st.st_rdev)
        elif stat.S_ISSOCK(mode):
            os.mknod(dst, mode)
        else:
            raise ValueError(f"cannot copy {src}: unsupported file type {oct(mode)}")
        _copy_metadata(src, st, dst)

    def copy_tree(self, src: Path, st: os.stat_result, dst: Path) -> None:
        """Copy an entry and, for a directory, everything below it."""
        if not stat.S_ISDIR(st.st_mode):
            self.copy_entry(src, st, dst)
            return
        os.mkdir(dst, 0o700)
        with os.scandir(src) as it:
            for entry in it:
                self.copy_tree(Path(entry.path), entry.stat(follow_symlinks=False), dst / entry.name)
        _copy_metadata(src, st, dst)


def _same_entry(lower: Path, lst: os.stat_result, upper: Path, ust: os.stat_result) -> bool:
    """Whether a non-directory entry is unchanged (metadata heuristic like continuity's)."""
    if stat.S_IFMT(lst.st_mode) != stat.S_IFMT(ust.st_mode):
        return False
    if (lst.st_mode, lst.st_uid, lst.st_gid, lst.st_size, lst.st_mtime_ns) != (
            ust.st_mode, ust.st_uid, ust.st_gid, ust.st_size, ust.st_mtime_ns):
        return False
    if stat.S_ISLNK(ust.st_mode):
        return os.readlink(lower) == os.readlink(upper)
    if stat.S_ISCHR(ust.st_mode) or stat.S_ISBLK(ust.st_mode):
        return lst.st_rdev == ust.st_rdev
    if stat.S_ISREG(ust.st_mode) and ust.st_mtime_ns % 1_000_000_000 == 0:
        # Second-granular times (e.g. from a tar) cannot tell edits apart: compare bytes.
        with open(lower, "rb") as a, open(upper, "rb") as b:
            while True:
                x, y = a.read(1 << 16), b.read(1 << 16)
                if x != y:
                    return False
                if not x:
                    return True
    return _xattrs(lower) == _xattrs(upper)


def _same_dir_meta(lst: os.stat_result, ust: os.stat_result) -> bool:
    return (lst.st_mode, lst.st_uid, lst.st_gid) == (ust.st_mode, ust.st_uid, ust.st_gid)


def diff_trees(lower: Path | None, upper: Path, out: Path) -> bool:
    """Write into ``out`` (an existing empty dir) the layer that turns ``lower`` into ``upper``.
    ``lower=None`` means the empty tree. Returns whether there was any change."""
    copier = _Copier()
    return _diff_dir(lower, upper, out, copier, make_out_dir=False)


def _diff_dir(lower: Path | None, upper: Path, out: Path, copier: _Copier, make_out_dir: bool) -> bool:
    """Compare one directory level. ``out`` is created lazily (only if something changed)."""
    lower_names: dict[str, os.stat_result] = {}
    if lower is not None:
        with os.scandir(lower) as it:
            for entry in it:
                lower_names[entry.name] = entry.stat(follow_symlinks=False)
    ust_dir = os.lstat(upper)
    changed = False

    def ensure_out() -> None:
        nonlocal changed
        if not changed and make_out_dir:
            os.mkdir(out, 0o700)
        changed = True

    upper_entries: dict[str, os.stat_result] = {}
    with os.scandir(upper) as it:
        for entry in it:
            upper_entries[entry.name] = entry.stat(follow_symlinks=False)

    survivors = [n for n in lower_names if n in upper_entries]
    # Opaque only below the root: overlayfs does not honour it on a layer's root directory.
    opaque = make_out_dir and lower is not None and bool(lower_names) and not survivors
    if opaque:
        ensure_out()
        os.setxattr(out, opaque_xattr(), b"y")

    for name, ust in sorted(upper_entries.items()):
        src, dst = upper / name, out / name
        lst = None if opaque else lower_names.get(name)
        if lst is None:
            ensure_out()
            copier.copy_tree(src, ust, dst)
        elif stat.S_ISDIR(ust.st_mode) and stat.S_ISDIR(lst.st_mode):
            sub_changed = _diff_dir(lower / name, src, dst, copier, make_out_dir=True)  # type: ignore[operator]
            if not sub_changed and not _same_dir_meta(lst, ust):
                os.mkdir(dst, 0o700)
                sub_changed = True
            if sub_changed:
                ensure_out()
                _copy_metadata(src, ust, dst)
        elif stat.S_ISDIR(ust.st_mode) or not _same_entry(lower / name, lst, src, ust):  # type: ignore[operator]
            ensure_out()
            copier.copy_tree(src, ust, dst)

    if not opaque:
        for name in sorted(set(lower_names) - set(upper_entries)):
            ensure_out()
            make_whiteout(out / name)

    if changed:
        _copy_metadata(upper, ust_dir, out)
        if opaque:
            os.setxattr(out, opaque_xattr(), b"y")
    return changed


def apply_layer(layer: Path, target: Path) -> None:
    """Apply a layer onto ``target`` in place: whiteouts delete, opaque dirs replace, the rest
    overwrites. Hard links inside the layer stay hard links."""
    _apply_dir(layer, target, _Copier())


def _apply_dir(layer: Path, target: Path, copier: _Copier) -> None:
    with os.scandir(layer) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        src, dst = Path(entry.path), target / entry.name
        st = entry.stat(follow_symlinks=False)
        if is_whiteout(st):
            _remove(dst)
            continue
        if stat.S_ISDIR(st.st_mode):
            if is_opaque(src) or not (dst.is_dir() and not dst.is_symlink()):
                _remove(dst)
                os.mkdir(dst, 0o700)
            _apply_dir(src, dst, copier)
            _copy_metadata(src, st, dst)
            continue
        _remove(dst)
        copier.copy_entry(src, st, dst)


def materialize(layers: list[Path], target: Path) -> None:
    """Build the merged tree of ``layers`` (lowest first) into the empty dir ``target``."""
    for layer in layers:
        apply_layer(layer, target)
