from __future__ import annotations

import hashlib
import os
import threading

import pytest

from buildkitpy.content.store import ContentStore, DigestMismatch, InvalidDigest
from buildkitpy.errors import NotFound


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_read_info_labels_delete(tmp_path):
    store = ContentStore(tmp_path)
    data = b"hello blob"
    d = store.write_bytes(data, labels={"gc.root": "yes"})
    assert d == digest(data)
    assert store.path(d) == tmp_path / "content/blobs/sha256" / d[7:]
    assert store.read(d) == data and store.exists(d)
    info = store.info(d)
    assert (info.size, info.labels) == (len(data), {"gc.root": "yes"})
    store.set_labels(d, {"gc.root": "", "other": "1"})
    assert store.info(d).labels == {"other": "1"}
    assert list(store.walk()) == [d]
    store.delete(d)
    assert not store.exists(d)
    with pytest.raises(NotFound):
        store.info(d)
    with pytest.raises(NotFound):
        store.delete(d)
    # Labels survive a reopen (SQLite), blobs too.
    d2 = store.write_bytes(b"x", labels={"k": "v"})
    store.close()
    assert ContentStore(tmp_path).info(d2).labels == {"k": "v"}


def test_digest_and_size_are_verified_and_nothing_partial_remains(tmp_path):
    store = ContentStore(tmp_path)
    with pytest.raises(DigestMismatch, match="does not match"):
        store.write_bytes(b"actual", digest(b"expected"))
    with store.ingest(digest(b"abc"), 3) as w:
        with pytest.raises(DigestMismatch, match="more than the expected"):
            w.write(b"abcd")
    with pytest.raises(DigestMismatch, match="got 2 bytes, expected 3"):
        with store.ingest(digest(b"abc"), 3) as w:
            w.write(b"ab")
            w.commit()
    assert list(store.walk()) == []
    assert os.listdir(tmp_path / "content/ingest") == []


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, "", None])
def test_malformed_digests_are_rejected(tmp_path, bad):
    store = ContentStore(tmp_path)
    with pytest.raises(InvalidDigest):
        store.exists(bad)
    with pytest.raises(InvalidDigest):
        store.ingest(bad, 1).__enter__()
    if bad:
        with pytest.raises(InvalidDigest):
            store.write_bytes(b"x", bad)


def test_concurrent_writers_of_one_digest_write_once(tmp_path):
    store = ContentStore(tmp_path)
    data = os.urandom(1 << 20)
    d = digest(data)
    wrote: list[bool] = []
    barrier = threading.Barrier(4)

    def writer():
        barrier.wait()
        with store.ingest(d, len(data)) as w:
            if w is None:
                wrote.append(False)
                return
            for i in range(0, len(data), 65536):
                w.write(data[i:i + 65536])
            w.commit()
            wrote.append(True)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wrote) == [False, False, False, True]
    assert store.read(d) == data


def test_leftover_ingests_are_cleaned_on_open(tmp_path):
    store = ContentStore(tmp_path)
    (tmp_path / "content/ingest/partial").write_bytes(b"half")
    store.close()
    ContentStore(tmp_path)
    assert os.listdir(tmp_path / "content/ingest") == []


def test_a_store_without_fsync_removes_what_a_crash_left_incomplete(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    ContentStore(tmp_path / "durable").write_bytes(b"synced")
    assert len(synced) == 1  # the default store syncs every blob before naming it
    synced.clear()

    store = ContentStore(tmp_path, durable=False)
    whole = store.write_bytes(b"whole")
    torn = store.write_bytes(b"t" * 5000)
    path = tmp_path / "content/ingest/adopted"
    path.write_bytes(b"adopted")
    adopted = store.adopt(path, digest(b"adopted")).digest
    assert synced == []
    assert store.read(torn) == b"t" * 5000  # its own blobs are not hashed again
    store.close()
    # What a power loss can leave: the blob renamed into place, its bytes never written out.
    os.chmod(store.path(torn), 0o644)
    os.truncate(store.path(torn), 0)
    os.chmod(store.path(whole), 0o644)
    store.path(whole).write_bytes(b"w")

    reopened = ContentStore(tmp_path, durable=False)  # the daemon, started again
    assert reopened.write_bytes(b"whole") == whole  # the same bytes again: written over the torn blob
    assert reopened.read(whole) == b"whole" and reopened.info(adopted).size == 7
    with pytest.raises(NotFound, match="incomplete on disk"):
        reopened.info(torn)
    assert not reopened.exists(torn)
    with pytest.raises(NotFound, match="not found"):
        reopened.open(torn)
    assert reopened.stored_bytes() == len(b"whole") + len(b"adopted")
