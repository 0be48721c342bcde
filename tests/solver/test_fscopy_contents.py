"""File contents copied by COPY: in the kernel where it can, by plain reads where it cannot."""

from __future__ import annotations

import os
import threading

from buildkitpy.solver.ops.fscopy import _copy_fd, _copy_file


def test_copies_exact_contents_of_many_sizes(tmp_path):
    for size in (0, 1, 4095, 4096, 1 << 20, (3 << 20) + 17):
        src, dst = tmp_path / f"s{size}", tmp_path / f"d{size}"
        data = os.urandom(size)
        src.write_bytes(data)
        _copy_file(str(src), str(dst), size)
        assert dst.read_bytes() == data


def test_a_file_longer_than_listed_is_copied_whole(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "d"
    src.write_bytes(b"x" * 5000)
    _copy_file(str(src), str(dst), 100)  # it grew after the listing
    assert dst.read_bytes() == b"x" * 5000


def test_sources_the_kernel_cannot_copy_fall_back_to_reads(tmp_path):
    r, w = os.pipe()  # copy_file_range refuses pipes (EINVAL)
    payload = os.urandom(300_000)

    def feed() -> None:
        os.write(w, payload)
        os.close(w)

    t = threading.Thread(target=feed)
    t.start()
    with open(tmp_path / "d", "wb") as out:
        _copy_fd(r, out.fileno(), len(payload))
    t.join()
    os.close(r)
    assert (tmp_path / "d").read_bytes() == payload
