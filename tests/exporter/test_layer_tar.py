"""Layer tars from real overlay-style directories, and layer blobs in a real content store."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import InvalidArgument
from buildkitpy.exporter.imagebuild.blobs import compress_layer
from buildkitpy.exporter.imagebuild.layertar import write_layer_tar
from buildkitpy.image import compression as comp
from buildkitpy.snapshot.layer import TRUSTED_OPAQUE_XATTR, make_whiteout


@pytest.fixture
def layer(tmp_path) -> Path:
    if os.geteuid() != 0:
        pytest.fail("layer tar tests need root (mknod, trusted.* xattrs, chown)")
    root = tmp_path / "snap" / "fs"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"data")
    os.chown(root / "dir" / "file", 1000, 2000)
    os.link(root / "dir" / "file", root / "hardlink")
    os.symlink("dir/file", root / "link")
    make_whiteout(root / "deleted")
    make_whiteout(root / "dir" / "gone")
    (root / "opaque").mkdir()
    os.setxattr(root / "opaque", TRUSTED_OPAQUE_XATTR, b"y")
    (root / "opaque" / "kept").write_text("k")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(root / "dir" / "file", "user.note", b"hello")
    (root / ("long-" + "x" * 150)).write_text("l")
    for p in [root, *root.rglob("*")]:
        os.utime(p, (1_650_000_000, 1_650_000_000), follow_symlinks=False)
    os.utime(root / "dir" / "sub", (1_800_000_000, 1_800_000_000))
    return root


def _tar(layer: Path, clamp: int | None = None) -> bytes:
    out = io.BytesIO()
    write_layer_tar(layer, out, clamp)
    return out.getvalue()


def test_overlay_layer_becomes_oci_tar(layer):
    data = _tar(layer)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = {m.name: m for m in t.getmembers()}
        names = [m.name for m in t.getmembers()]
    # in order of the source names ("deleted" sorts as itself, not as ".wh.deleted")
    assert names == [".wh.deleted", "dir", "dir/file", "dir/.wh.gone", "dir/sub", "fifo", "hardlink", "link",
                     "long-" + "x" * 150, "null", "opaque", "opaque/.wh..wh..opq", "opaque/kept"]
    assert members[".wh.deleted"].isfile() and members[".wh.deleted"].size == 0
    assert members["dir/.wh.gone"].isfile()
    assert members["opaque/.wh..wh..opq"].isfile()
    assert "SCHILY.xattr.trusted.overlay.opaque" not in members["opaque"].pax_headers
    f = members["dir/file"]
    assert (f.uid, f.gid, f.uname, f.gname, f.mtime) == (1000, 2000, "", "", 1_650_000_000)
    assert f.pax_headers.get("SCHILY.xattr.user.note") == "hello"
    assert members["hardlink"].islnk() and members["hardlink"].linkname == "dir/file"
    assert members["link"].issym() and members["link"].linkname == "dir/file"
    assert members["fifo"].isfifo()
    assert members["null"].ischr() and (members["null"].devmajor, members["null"].devminor) == (1, 3)
    assert members["dir/sub"].mtime == 1_800_000_000
    # Go's end of archive: two zero blocks, no padding to a 10 KiB record
    assert data.endswith(b"\0" * 1024) and not data.endswith(b"\0" * 1536)
    assert _tar(layer) == data


def test_entries_are_sorted_depth_first(layer):
    with tarfile.open(fileobj=io.BytesIO(_tar(layer))) as t:
        names = t.getnames()
    assert names.index("dir") < names.index("dir/file") < names.index("dir/sub") < names.index("fifo")
    assert names.index("opaque") < names.index("opaque/.wh..wh..opq") < names.index("opaque/kept")


def test_only_what_ustar_cannot_hold_gets_pax_records(layer):
    data = _tar(layer)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = {m.name: m for m in t.getmembers()}
    assert members["link"].pax_headers == {}
    assert members["opaque/kept"].pax_headers == {}
    assert "path" in members["long-" + "x" * 150].pax_headers


def test_clamp_rewrites_only_later_times(layer):
    with tarfile.open(fileobj=io.BytesIO(_tar(layer, clamp=1_700_000_000))) as t:
        members = {m.name: m for m in t.getmembers()}
    assert members["dir/sub"].mtime == 1_700_000_000
    assert members["dir/file"].mtime == 1_650_000_000


def test_blob_digests_and_dedup(layer, tmp_path):
    store = ContentStore(tmp_path / "root")
    raw = _tar(layer)
    gz = compress_layer(layer, store, comp.CompressionConfig("gzip"))
    blob = store.read(gz.digest)
    assert gz.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert gzip.decompress(blob) == raw
    assert gz.size == len(blob)
    assert store.info(gz.digest).labels["containerd.io/uncompressed"] == gz.diff_id
    again = compress_layer(layer, store, comp.CompressionConfig("gzip"))
    assert again == gz  # deterministic, stored once
    plain = compress_layer(layer, store, comp.CompressionConfig("uncompressed"))
    assert plain.digest == plain.diff_id == gz.diff_id
    stored = comp.CompressionConfig("gzip", level=0)
    assert gzip.decompress(store.read(compress_layer(layer, store, stored).digest)) == raw
    assert not any((tmp_path / "root" / "content" / "ingest").iterdir())


def test_compression_options():
    assert comp.parse_options({}) == comp.CompressionConfig("gzip", None, False)
    assert comp.parse_options({"compression": "zstd", "compression-level": "19",
                               "force-compression": "true"}) == comp.CompressionConfig("zstd", 19, True)
    for attrs, message in (({"compression": "bzip2"}, "unsupported layer compression"),
                           ({"compression-level": "ten"}, "not an integer"),
                           ({"compression": "zstd", "compression-level": "30"}, "out of range"),
                           ({"force-compression": "perhaps"}, "invalid boolean")):
        with pytest.raises(InvalidArgument, match=message):
            comp.parse_options(attrs)
    assert comp.convert_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip", oci=True) == \
        "application/vnd.oci.image.layer.v1.tar+gzip"
    assert comp.convert_media_type("application/vnd.oci.image.layer.v1.tar", oci=False) == \
        "application/vnd.docker.image.rootfs.diff.tar"


def _names(layer: Path, lowers: list[Path]) -> dict[str, tarfile.TarInfo]:
    out = io.BytesIO()
    write_layer_tar(layer, out, None, lowers)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        return {m.name: m for m in t.getmembers()}


@pytest.fixture
def chain(tmp_path) -> tuple[Path, Path, Path]:
    """A base layer, a middle layer on it, and the upper dir of a step on both, as overlayfs
    leaves them: copied-up parents, a copy-up that changed nothing, mount-point stubs removed."""
    if os.geteuid() != 0:
        pytest.fail("layer tar tests need root (mknod, trusted.* xattrs)")
    base, mid, upper = (tmp_path / n / "fs" for n in ("base", "mid", "upper"))
    for d in (base, mid, upper):
        d.mkdir(parents=True)
    (base / "etc").mkdir()
    (base / "etc" / "passwd").write_text("root\n")
    (base / "cfg" / "old").mkdir(parents=True)
    (base / "cfg" / "one").write_text("1")
    (base / "cfg" / "old" / "two").write_text("2")
    (base / "data").mkdir()
    (base / "data" / "a").write_text("a")
    (mid / "data").mkdir()
    (mid / "data" / "b").write_text("b")
    make_whiteout(mid / "data" / "a")
    # the step: /etc copied up for an /etc/hosts mount stub (removed again), /etc/passwd copied
    # up by a no-op chown, /data/new written, /cfg replaced by a fresh directory, /data/a (already
    # deleted below) deleted again, /nothing created and deleted (a whiteout of nothing)
    (upper / "etc").mkdir()
    shutil.copy2(base / "etc" / "passwd", upper / "etc" / "passwd")
    (upper / "data").mkdir()
    (upper / "data" / "new").write_text("n")
    make_whiteout(upper / "data" / "a")
    make_whiteout(upper / "nothing")
    (upper / "cfg").mkdir()
    os.setxattr(upper / "cfg", TRUSTED_OPAQUE_XATTR, b"y")
    (upper / "cfg" / "fresh").write_text("f")
    return base, mid, upper


def test_unchanged_copy_ups_are_left_out_but_parents_of_changes_stay(chain):
    base, mid, upper = chain
    names = _names(upper, [base, mid])
    assert "etc" not in names and "etc/passwd" not in names
    assert "data" in names and names["data"].isdir() and "data/new" in names
    assert ".wh.nothing" not in names and "data/.wh.a" not in names


def test_opaque_directory_becomes_whiteouts_of_what_it_hides(chain):
    base, mid, upper = chain
    names = _names(upper, [base, mid])
    assert "cfg/.wh..wh..opq" not in names
    assert {"cfg/.wh.one", "cfg/.wh.old", "cfg/fresh"} <= set(names)
    assert "cfg/.wh.old/two" not in names
    assert names["cfg/.wh.one"].uid == 0 and names["cfg/.wh.one"].mode == 0


def test_without_lowers_the_upper_dir_is_written_as_is(chain):
    _, _, upper = chain
    names = _names(upper, None)  # type: ignore[arg-type]
    assert {"etc", "etc/passwd", ".wh.nothing", "cfg/.wh..wh..opq"} <= set(names)
