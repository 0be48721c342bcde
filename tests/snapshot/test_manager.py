"""OverlaySnapshotManager against real overlayfs (and its copy mode) on real files."""

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from buildkitpy.snapshot.layer import TRUSTED_OPAQUE_XATTR, is_whiteout
from buildkitpy.snapshot.manager import OverlaySnapshotManager, SnapshotInUseError
from buildkitpy.snapshot.mount import mounted_under

pytestmark = pytest.mark.root


def commit_with(mgr, parent, files: dict[str, str | None], description: str = ""):
    """A committed child of ``parent`` with ``files`` written (None deletes; trailing / = dir)."""
    mut = mgr.new_mutable(parent, description)
    with mut.mount() as root:
        for name, content in files.items():
            path = root / name
            if content is None:
                if path.is_dir():
                    subprocess.run(["rm", "-rf", str(path)], check=True)
                else:
                    path.unlink()
            elif name.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
    return mut.commit()


def tree(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel + "/"] = ""
        else:
            out[rel] = p.read_text()
    return out


def test_chain_mounts_show_merged_tree_and_deletions(manager):
    base = commit_with(manager, None, {"a": "1", "dir/b": "2", "dir/c": "3"})
    child = commit_with(manager, base, {"a": "changed", "dir/b": None, "new": "4"})
    with base.mount() as root:
        assert tree(root) == {"a": "1", "dir/": "", "dir/b": "2", "dir/c": "3"}
    with child.mount() as root:
        assert tree(root) == {"a": "changed", "dir/": "", "dir/c": "3", "new": "4"}
    if manager.mode == "overlay":
        assert len(child.layers()) == 2
        assert is_whiteout(os.lstat(child.layers()[1] / "dir" / "b"))
    else:
        assert len(child.layers()) == 1
    assert child.layer_dirs() == [str(p) for p in child.layers()]
    for ref in (child, base):
        ref.release()


def test_shared_mount_is_refcounted_and_unmounted_on_last_release(manager):
    base = commit_with(manager, None, {"a": "1"})
    child = commit_with(manager, base, {"b": "2"})
    with child.mount() as p1, child.mount() as p2:
        assert p1 == p2
        if manager.mode == "overlay":
            assert Path(os.path.realpath(p1)) in mounted_under(manager.root)
        with pytest.raises(SnapshotInUseError):
            manager.delete(child.id)
    assert mounted_under(manager.root) == []
    child.release()
    base.release()


def test_concurrent_mounts_of_one_snapshot_share_it_and_the_last_release_unmounts(manager):
    """Mount and unmount run outside the manager's lock: users arriving while the mount (or the
    unmount) is under way wait for it, so each sees the whole tree and none is left mounted."""
    base = commit_with(manager, None, {"a": "1"})
    child = commit_with(manager, base, {"b": "2"})
    others = [commit_with(manager, base, {f"c{i}": str(i)}) for i in range(4)]
    errors: list[BaseException] = []

    def use(ref, expect: dict[str, str]) -> None:
        try:
            for _ in range(15):
                with ref.mount() as root:
                    assert tree(root) == expect
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(child, {"a": "1", "b": "2"})) for _ in range(8)]
    threads += [threading.Thread(target=use, args=(o, {"a": "1", f"c{i}": str(i)}))
                for i, o in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mounted_under(manager.root) == []
    for ref in (*others, child, base):
        ref.release()


def test_mutable_sees_parent_and_commit_freezes(manager):
    base = commit_with(manager, None, {"etc/passwd": "root"})
    mut = manager.new_mutable(base)
    with mut.mount() as root:
        assert (root / "etc/passwd").read_text() == "root"
        (root / "etc/passwd").write_text("edited")
        with pytest.raises(SnapshotInUseError):
            mut.commit()
    committed = mut.commit()
    with pytest.raises(RuntimeError):
        mut.mount().__enter__()
    with base.mount() as root:
        assert (root / "etc/passwd").read_text() == "root"
    with committed.mount() as root:
        assert (root / "etc/passwd").read_text() == "edited"
    assert committed.parent_id == base.id
    assert committed.size() > 0
    committed.release()
    base.release()


def test_mutable_overlay_is_volatile_and_mounts_again(manager):
    """A writable overlay skips the sync of the whole upper filesystem at unmount (volatile), and
    the marker overlay leaves for that is removed, so the same mutable mounts again."""
    base = commit_with(manager, None, {"a": "1"})
    mut = manager.new_mutable(base)
    for round_ in ("first", "second"):
        with mut.mount() as root:
            if manager.mode == "overlay":
                with open("/proc/self/mountinfo") as f:
                    options = next(line.split(" - ")[1] for line in f if f" {root} " in line)
                assert {"volatile", "fsync=volatile"} & set(options.split()[2].split(","))
            (root / round_).write_text(round_)
    committed = mut.commit()
    with committed.mount() as root:
        assert tree(root) == {"a": "1", "first": "first", "second": "second"}
    committed.release()
    base.release()


def test_released_mutable_leaves_nothing(manager):
    base = commit_with(manager, None, {"a": "1"})
    mut = manager.new_mutable(base)
    with mut.mount() as root:
        (root / "x").write_text("x")
    mut.release()
    assert not (manager.root / "snapshots" / mut.id).exists()
    assert list(manager.walk_ids()) == [base.id]
    base.release()


def test_refcounts_and_dependencies_protect_data(manager):
    base = commit_with(manager, None, {"a": "1"})
    child = commit_with(manager, base, {"b": "2"})
    base_id, child_id = base.id, child.id
    base.release()
    with pytest.raises(SnapshotInUseError, match="needed by"):
        manager.delete(base_id)
    # child is still held by its handle: prune keeps both
    assert manager.prune() == []
    extra = manager.get(child_id)
    child.release()
    assert manager.prune() == []
    extra.release()
    assert manager.prune(keep={child_id}) == []
    assert sorted(manager.prune()) == sorted([child_id, base_id])
    assert list(manager.walk_ids()) == []
    assert [p.name for p in (manager.root / "snapshots").iterdir() if not p.name.startswith("metadata")] == []
    with pytest.raises(KeyError):
        manager.get(base_id)


@pytest.mark.parametrize("how", ["delete", "prune", "release a mutable"])
def test_removing_a_big_tree_does_not_hold_up_other_snapshot_calls(manager, how):
    """The row goes under the manager's lock, the tree after it: a build's snapshot calls (the
    local source makes its new snapshot on the event loop) do not wait for a removal."""
    files = {f"d{i // 1000}/f{i}": "x" for i in range(10_000)}
    if how == "release a mutable":
        victim = manager.new_mutable(None)
        with victim.mount() as root:
            for name in files:
                (root / name).parent.mkdir(exist_ok=True)
                (root / name).write_text("x")
        remove = victim.release
    else:
        big = commit_with(manager, None, files)
        victim = big
        big_id = big.id
        big.release()
        remove = (lambda: manager.delete(big_id)) if how == "delete" else manager.prune
    removing = threading.Thread(target=remove)
    removing.start()
    while manager.usage_of(victim.id) is not None:  # until its row is gone
        pass
    other = manager.new_mutable(None, "another build's snapshot")
    still_removing = removing.is_alive()
    removing.join()
    other.release()
    assert still_removing, "a new snapshot waited for the removal of another's tree"
    assert not (manager.root / "snapshots" / victim.id).exists()


def test_merge_stacks_layers_and_whiteouts(manager):
    image = commit_with(manager, None, {"etc/foo": "image", "etc/keep": "k", "bin/sh": "sh"})
    image2 = commit_with(manager, image, {"etc/foo": None})
    other = commit_with(manager, None, {"app/main": "m", "etc/keep": "other"})
    # other on top: other's files win; image2's deletion of etc/foo is part of image2's layers
    merged = manager.merge([other, image2])
    with merged.mount() as root:
        assert tree(root) == {"app/": "", "app/main": "m", "bin/": "", "bin/sh": "sh",
                              "etc/": "", "etc/keep": "k"}
    merged2 = manager.merge([image, other])
    with merged2.mount() as root:
        assert (root / "etc/keep").read_text() == "other"
        assert (root / "etc/foo").read_text() == "image"
    if manager.mode == "overlay":
        assert len(merged.layers()) == 3
    assert merged.layer_dirs() == [str(p) for p in merged.layers()]
    for ref in (merged2, merged, other, image2, image):
        ref.release()


def test_lower_layers_are_those_a_layer_was_made_on_even_when_restacked(manager):
    base = commit_with(manager, None, {"a": "1"})
    top = commit_with(manager, base, {"b": "2"})
    other = commit_with(manager, None, {"c": "3"})
    merged = manager.merge([other, top])
    if manager.mode == "overlay":
        assert manager.lower_layers(top.layers()[-1]) == base.layers()
        assert manager.lower_layers(merged.layers()[-1]) == base.layers()
        assert manager.lower_layers(base.layers()[0]) == []
        computed = manager.diff(other, top)
        assert manager.lower_layers(computed.layers()[-1]) is None
        computed.release()
    else:
        assert manager.lower_layers(top.layers()[-1]) is None
    for ref in (merged, other, top, base):
        ref.release()


def test_diff_along_a_chain_reuses_layers(manager):
    base = commit_with(manager, None, {"a": "1", "d/x": "x"})
    top = commit_with(manager, base, {"b": "2", "d/x": None})
    d = manager.diff(base, top)
    if manager.mode == "overlay":
        assert d.layers() == top.layers()[1:]
    with d.mount() as root:
        assert tree(root) == {"b": "2", "d/": ""}
    # applying the diff onto base again reproduces top
    again = manager.merge([base, d])
    with again.mount() as root, top.mount() as top_root:
        assert tree(root) == tree(top_root)
    for ref in (again, d, top, base):
        ref.release()


def test_computed_diff_has_whiteouts_and_opaque_dirs(manager):
    lower = commit_with(manager, None, {"keep": "k", "gone": "g", "dir/old1": "1", "dir/old2": "2",
                                        "sub/f": "f"})
    upper = commit_with(manager, None, {"keep": "k", "dir/new": "n", "sub/f": "f2", "added/": ""})
    # same content for "keep" but written separately: times differ, so content is compared via mtime
    d = manager.diff(lower, upper)
    layer_dir = (manager.root / "snapshots" / d.id / ("fs" if manager.mode == "overlay" else "diff"))
    st = os.lstat(layer_dir / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(layer_dir / "dir", TRUSTED_OPAQUE_XATTR) == b"y"
    assert (layer_dir / "dir" / "new").read_text() == "n"
    assert not (layer_dir / "dir" / "old1").exists()
    assert (layer_dir / "sub" / "f").read_text() == "f2"
    # lower + diff == upper
    applied = manager.merge([lower, d])
    with applied.mount() as a, upper.mount() as u:
        assert tree(a) == tree(u)
    for ref in (applied, d, upper, lower):
        ref.release()


def test_identical_snapshots_diff_to_empty(manager):
    base = commit_with(manager, None, {"a": "1"})
    d = manager.diff(base, base)
    with d.mount() as root:
        assert list(root.iterdir()) == []
    d.release()
    base.release()


def test_usage_reports_sizes_and_in_use(manager):
    base = commit_with(manager, None, {"big": "x" * 100_000}, description="big one")
    usage = {u.id: u for u in manager.usage()}
    assert usage[base.id].size >= 100_000
    assert usage[base.id].in_use and usage[base.id].description == "big one"
    base.release()
    assert not {u.id: u for u in manager.usage()}[base.id].in_use


def test_usage_stats_are_seen_at_once_and_kept_across_a_restart(tmp_path):
    mgr = OverlaySnapshotManager(tmp_path / "state")
    base = commit_with(mgr, None, {"f": "x"})
    committed_at = {u.id: u for u in mgr.usage()}[base.id].last_used
    handles = [mgr.get(base.id) for _ in range(3)]
    for h in handles:
        h.release()
    seen = {u.id: u for u in mgr.usage()}[base.id]
    assert seen.usage_count == 3 and seen.last_used >= committed_at
    again = mgr.get(base.id)  # taken after usage() wrote the first three: written by close()
    again.release()
    base.release()
    mgr.close()
    mgr = OverlaySnapshotManager(tmp_path / "state")
    try:
        assert {u.id: u for u in mgr.usage()}[base.id].usage_count == 4
    finally:
        mgr.close()


@pytest.mark.parametrize("n", [90, 150])
def test_long_chain_beyond_one_page_of_mount_options(tmp_path, n):
    """90 layers only fit as relative paths; 150 need stacked group mounts."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    manager = OverlaySnapshotManager(tmp_path / "state-with-a-rather-long-directory-name", mode="overlay")
    ref = None
    for i in range(n):
        nxt = commit_with(manager, ref, {f"f{i}": str(i)})
        if ref is not None:
            ref.release()
        ref = nxt
    assert len(ref.layers()) == n
    with ref.mount() as root:
        assert len(list(root.iterdir())) == n
        assert (root / "f0").read_text() == "0"
    mut = manager.new_mutable(ref)
    with mut.mount() as root:
        (root / "f0").write_text("top")
        assert len(list(root.iterdir())) == n
    top = mut.commit()
    with top.mount() as root:
        assert (root / "f0").read_text() == "top"
    top.release()
    ref.release()
    manager.close()
    assert mounted_under(tmp_path) == []


def test_restart_removes_orphans_and_incomplete_records(tmp_path):
    state = tmp_path / "state"
    script = f"""
import os, sys
from pathlib import Path
from buildkitpy.snapshot.manager import OverlaySnapshotManager
m = OverlaySnapshotManager(Path({str(state)!r}))
base = m.new_mutable(None)
with base.mount() as r:
    (r / "a").write_text("1")
base = base.commit()
mut = m.new_mutable(base)
ctx = mut.mount()
root = ctx.__enter__()
(root / "half-written").write_text("x")
print(base.id, mut.id, flush=True)
os._exit(0)  # crash: mutable still mounted, never committed or released
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    base_id, mut_id = out.stdout.split()
    # a directory the database does not know (crash between creating data and writing the row)
    orphan = state / "snapshots" / "deadbeefdeadbeef"
    (orphan / "fs").mkdir(parents=True)
    # a row whose data is gone
    db = sqlite3.connect(state / "snapshots" / "metadata.db")
    db.execute("INSERT INTO snapshots (id, parent, kind, layers, has_data, created, last_used) "
               "VALUES ('feedfacefeedface', NULL, 'committed', '[\"feedfacefeedface\"]', 1, 0, 0)")
    db.commit()
    db.close()

    mgr = OverlaySnapshotManager(state)
    try:
        assert list(mgr.walk_ids()) == [base_id]
        assert not orphan.exists()
        assert not (state / "snapshots" / mut_id).exists()
        assert mounted_under(state) == []
        with pytest.raises(KeyError):
            mgr.get("feedfacefeedface")
        ref = mgr.get(base_id)
        with ref.mount() as root:
            assert (root / "a").read_text() == "1"
        ref.release()
    finally:
        mgr.close()


def test_copy_mode_is_kept_for_an_existing_root(tmp_path):
    m = OverlaySnapshotManager(tmp_path, mode="copy")
    m.close()
    m = OverlaySnapshotManager(tmp_path)
    assert m.mode == "copy"
    m.close()
    with pytest.raises(ValueError, match="copy-mode"):
        OverlaySnapshotManager(tmp_path, mode="overlay")


def test_overlayfs_root_falls_back_to_copy(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from buildkitpy.snapshot.mount import mount_overlay
    for d in ("l1", "l2", "up", "work", "merged"):
        (tmp_path / d).mkdir()
    stack = mount_overlay(tmp_path / "merged", [tmp_path / "l1", tmp_path / "l2"], upper=tmp_path / "up",
                          work=tmp_path / "work", base=tmp_path)
    try:
        m = OverlaySnapshotManager(tmp_path / "merged" / "state")
        assert m.mode == "copy"
        ref = commit_with(m, None, {"a": "1"})
        with ref.mount() as root:
            assert (root / "a").read_text() == "1"
        ref.release()
        m.close()
    finally:
        stack.unmount()
