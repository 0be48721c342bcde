"""``cp -a``-like copying between two trees with BuildKit's COPY semantics (fsutil's copy package).

Rules that matter: a destination ending in '/' (or an existing directory) receives the source under
its base name; ``copy_dir_contents`` copies a directory's children instead of the directory; missing
destination parents are created (mode 0755 or the copy mode, owned by the chown user); ownership is
preserved unless a chown is given; ``mode`` replaces the permission bits and a mode string edits
them; a timestamp replaces atime/mtime; include/exclude patterns filter by the path relative to the
source; hard links inside one copy stay hard links. Every path is resolved inside its root.

Sharing instead of copying (``CopyOptions.share``): when the caller's snapshot manager says the
source tree is the directory of one immutable layer and the destination the directory of a layer
being made from scratch (``link_source`` / ``link_target``, same filesystem), a regular file whose
copy would carry exactly the source inode's metadata (owner after the chown, permission bits after
the mode, mtime, and so xattrs) is hard-linked rather than copied: ext4 has no reflink and 530 MB
took 1.5 s to copy. That is indistinguishable from a copy only because no layer is written after
its commit, which the code keeps as an invariant (tests/solver/test_copy_sharing.py breaks when it
does not hold):

* the local source syncs a later transfer into a new snapshot on top of the previous copy, and its
  receiver replaces entries by unlink + create, never opening an existing file for writing;
* RUN rootfs, rw bind mounts and gateway containers are new overlay uppers over the layers (a write
  copies up into a new inode); read-only mounts are read-only; cache mounts are seeded with ``cp
  -a`` (new inodes); image layers are unpacked into new snapshots and never written afterwards;
* within one FileOp the destination stays writable for the later actions: sharing is off when any
  action could write into an existing file (mkfile, an ADD that unpacks an archive), copies replace
  a file by unlink + create, and a source inode is linked only once into one destination (two
  copies of one file are two files, as in BuildKit, not a hard link);
* the layer tar writers key hard links per layer (an inode shared by two layers is a regular file
  in each), and ``merge`` never stacks two layers sharing an inode (``snapshot.manager``).

What stays visible is the inode's link count (``stat`` in a later RUN shows 2 for such a file),
as with BuildKit's own hard-link based merges.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from buildkitpy.errors import SolveError
from buildkitpy.fsutil.patterns import PatternMatcher
from buildkitpy.snapshot.api import LinkSource
from buildkitpy.solver.ops.modestr import ModeSet
from buildkitpy.solver.pathutil import root_path, secure_join

DEFAULT_DIR_MODE = 0o755


@dataclass
class CopyOptions:
    chown: tuple[int, int] | None = None
    utime_ns: int | None = None
    mode: int | None = None
    mode_set: ModeSet | None = None
    include: PatternMatcher = field(default_factory=lambda: PatternMatcher(()))
    exclude: PatternMatcher = field(default_factory=lambda: PatternMatcher(()))
    copy_dir_contents: bool = False
    follow_links: bool = False
    always_replace: bool = False
    share: Sharing | None = None


@dataclass
class Sharing:
    """Hard-link permission for copies into one destination layer (see the module docstring)."""

    source: LinkSource  # the layers of the source tree, topmost first
    view_root: str  # where the source tree is mounted
    dev: int  # the filesystem of the layers and of the destination
    linked: dict[int, str] = field(default_factory=dict)  # inodes linked into the destination → origin

    def find(self, src: str, st: os.stat_result) -> tuple[str, str] | None:
        """The layer file that ``src`` (a regular file of the mounted tree) is, and the layer that
        first held its inode: the topmost layer having its path, if that is the inode the tree
        reports (overlayfs reports a copied-up file under its lower inode's number: such a file,
        and anything unexpected, is copied)."""
        prefix = self.view_root.rstrip("/") + "/"
        if not src.startswith(prefix):  # the copier's paths are joined onto the tree's root
            return None
        rel = src[len(prefix):]
        for layer in self.source.layers:
            path = os.path.join(layer.path, rel)
            try:
                lst = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if lst.st_dev != self.dev or lst.st_ino != st.st_ino or not stat.S_ISREG(lst.st_mode) \
                    or (lst.st_mode, lst.st_uid, lst.st_gid, lst.st_size, lst.st_mtime_ns) != \
                    (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns):
                return None
            return path, layer.shared.get(lst.st_ino, layer.id)
        return None


def set_times(path: str | Path, ns: int | None) -> None:
    if ns is not None:
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def apply_owner(path: str | Path, chown: tuple[int, int] | None) -> None:
    if chown is not None:
        os.lchown(path, chown[0], chown[1])


def mkdir_all(path: Path, mode: int, chown: tuple[int, int] | None, utime_ns: int | None) -> list[Path]:
    """Create ``path`` (already resolved inside its root) and missing parents; return the created."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if os.path.lexists(p) and not p.is_dir():
        raise SolveError(f"cannot create directory {path}: {p.name} is not a directory")
    created = []
    for d in reversed(missing):
        os.mkdir(d, mode)
        os.chmod(d, mode)  # not subject to the daemon's umask
        apply_owner(d, chown)
        created.append(d)
    for d in reversed(created):  # innermost first: creating a child moves its parent's mtime
        set_times(d, utime_ns)
    return created


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass  # like BuildKit's xattr error handler: best effort


def _copy_file(src: str, dst: str, size: int) -> None:
    """Copy contents in the kernel (``copy_file_range``): no pass through Python buffers, and
    filesystems that can share extents do."""
    fi = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _copy_fd(fi, fo, size)
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def _copy_fd(fi: int, fo: int, size: int) -> None:
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(fi, fo, size - copied)
            if not n:
                break
            copied += n
    except OSError as exc:
        if copied or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                       errno.EPERM, errno.EBADF):
            raise
    # the rest (a filesystem that cannot copy in the kernel, or a file that grew): plain reads
    while data := os.read(fi, 1 << 20):
        view = memoryview(data)
        while view:
            view = view[os.write(fo, view):]


class _Copier:
    def __init__(self, opts: CopyOptions) -> None:
        self.o = opts
        self.inodes: dict[tuple[int, int], str] = {}
        self.parent_dirs: list[list] = []  # [src, dst, copied] for lazily created directories

    def copy_info(self, st: os.stat_result, src: str, dst: str) -> None:
        if self.o.chown is not None:
            os.lchown(dst, *self.o.chown)
        else:
            os.lchown(dst, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            perm = stat.S_IMODE(st.st_mode)
            if self.o.mode is not None:
                # An explicit mode replaces all bits, special ones included (``COPY --chmod=4755``);
                # the source's setuid/setgid/sticky bits do not survive it (fsutil's copy does this).
                perm = self.o.mode & 0o7777
            elif self.o.mode_set is not None:
                perm = self.o.mode_set.apply(st.st_mode, stat.S_ISDIR(st.st_mode))
            os.chmod(dst, perm)
        _copy_xattrs(src, dst)
        if self.o.utime_ns is not None:
            set_times(dst, self.o.utime_ns)
        else:
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def copy(self, src: str, rel: str, target: str, overwrite_meta: bool) -> None:
        include, excluded = True, False
        if rel:
            if self.o.include:
                include = self.o.include.matches_or_parent_matches(rel)
            if self.o.exclude and self.o.exclude.matches_or_parent_matches(rel):
                include, excluded = False, True
            if not include and not self.o.include and not self.o.exclude.exclusions:
                return
        st = os.lstat(src)
        is_dir = stat.S_ISDIR(st.st_mode)
        if not include and not is_dir:
            return
        try:
            tst: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            tst = None
        if include:
            if self.o.always_replace and tst is not None and not (is_dir and stat.S_ISDIR(tst.st_mode)):
                _remove(target)
                tst = None
            self._create_parent_dirs(overwrite_meta)
        if not is_dir and tst is not None:
            if stat.S_ISDIR(tst.st_mode):
                raise SolveError(f"cannot replace to directory {target} with file")
            os.unlink(target)
        if is_dir:
            created = self._copy_dir(src, rel, target, st, overwrite_meta, include, excluded)
            if include and (overwrite_meta or created):
                self.copy_info(st, src, target)
            elif include and tst is not None:
                os.utime(target, ns=(tst.st_atime_ns, tst.st_mtime_ns), follow_symlinks=False)
            return
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            first = self.inodes.get(key) if st.st_nlink > 1 else None
            if first is not None:
                os.link(first, target)
                return
            found = self._shared_file(src, st) if self.o.share is not None else None
            if found is not None:
                os.link(found[0], target, follow_symlinks=False)
                self.o.share.linked[st.st_ino] = found[1]  # type: ignore[union-attr]
                if st.st_nlink > 1:
                    self.inodes[key] = target
                return
            _copy_file(src, target, st.st_size)
            if st.st_nlink > 1:
                self.inodes[key] = target
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode) or \
                stat.S_ISSOCK(st.st_mode):
            os.mknod(target, st.st_mode, st.st_rdev)
        self.copy_info(st, src, target)

    def _shared_file(self, src: str, st: os.stat_result) -> tuple[str, str] | None:
        """The layer file to hard-link for this regular file, and its inode's first layer, when
        its copy would be that inode as it is (``copy_info`` a no-op) and the inode is not in the
        destination yet; else None."""
        o, share = self.o, self.o.share
        assert share is not None
        if st.st_ino in share.linked:
            return None
        if o.chown is not None and o.chown != (st.st_uid, st.st_gid):
            return None
        perm = stat.S_IMODE(st.st_mode)
        if o.mode is not None and o.mode & 0o7777 != perm:
            return None
        if o.mode is None and o.mode_set is not None and o.mode_set.apply(st.st_mode, False) != perm:
            return None
        if o.utime_ns is not None and not o.utime_ns == st.st_mtime_ns == st.st_atime_ns:
            return None
        return share.find(src, st)

    def _copy_dir(self, src: str, rel: str, dst: str, st: os.stat_result, overwrite_meta: bool,
                  include: bool, excluded: bool) -> bool:
        created = False
        entry = [src, dst, False]
        if include:
            created = _copy_dir_only(dst, st, overwrite_meta)
            entry[2] = True
        self.parent_dirs.append(entry)
        try:
            if excluded and not self.o.exclude.exclusions:
                return created
            if not include and self.o.include and not self.o.include.could_match_below(rel):
                return created
            for name in sorted(os.listdir(src)):
                self.copy(os.path.join(src, name), posixpath.join(rel, name) if rel else name,
                          os.path.join(dst, name), True)
        finally:
            self.parent_dirs.pop()
        return created

    def _create_parent_dirs(self, overwrite_meta: bool) -> None:
        for entry in self.parent_dirs:
            if entry[2]:
                continue
            src, dst = entry[0], entry[1]
            st = os.stat(src)
            if _copy_dir_only(dst, st, overwrite_meta):
                self.copy_info(st, src, dst)
            entry[2] = True


def _copy_dir_only(dst: str, st: os.stat_result, overwrite_meta: bool) -> bool:
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        os.mkdir(dst, stat.S_IMODE(st.st_mode))
        return True
    if not stat.S_ISDIR(dst_st.st_mode):
        raise SolveError(f"cannot copy to non-directory: {dst}")
    if overwrite_meta:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    return False


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def copy(src_root: Path, src: str, dst_root: Path, dst: str, opts: CopyOptions) -> None:
    """Copy ``src`` (in-root path, no wildcards) to ``dst`` (clean in-root path; a trailing '/'
    means "into this directory")."""
    head, tail = posixpath.split(dst)
    ensure = head if tail not in ("", ".") else dst
    dir_mode = opts.mode if opts.mode is not None else DEFAULT_DIR_MODE
    created_parents: list[Path] = []
    if ensure:
        created_parents += mkdir_all(secure_join(dst_root, ensure), dir_mode, opts.chown, opts.utime_ns)
    dest_path = str(secure_join(dst_root, posixpath.normpath(dst)))
    src_followed = str(root_path(src_root, src, opts.follow_links))
    try:
        src_st = os.lstat(src_followed)
    except FileNotFoundError:
        raise SolveError(f"failed to copy: {src}: no such file or directory") from None
    try:
        dest_st: os.stat_result | None = os.stat(dest_path)
    except (FileNotFoundError, NotADirectoryError):
        dest_st = None
    src_is_dir = stat.S_ISDIR(src_st.st_mode)
    if (not opts.copy_dir_contents and src_is_dir and dest_st is not None) or \
            (not src_is_dir and dest_st is not None and stat.S_ISDIR(dest_st.st_mode)):
        dest_path = os.path.join(dest_path, posixpath.basename(posixpath.normpath(src)) or ".")
    target_dir = dest_path if (opts.copy_dir_contents and src_is_dir and dest_st is None) \
        else os.path.dirname(dest_path)
    created_parents += mkdir_all(Path(target_dir), dir_mode, opts.chown, opts.utime_ns)
    if os.path.islink(dest_path) and not src_is_dir:
        os.unlink(dest_path)
    copier = _Copier(opts)
    try:
        copier.copy(src_followed, "", dest_path, False)
    except OSError as exc:
        if exc.errno == errno.ENOENT and exc.filename == src_followed:
            raise SolveError(f"failed to copy: {src}: no such file or directory") from None
        raise
    for d in reversed(created_parents):  # copying into them moved their mtime
        set_times(d, opts.utime_ns)
