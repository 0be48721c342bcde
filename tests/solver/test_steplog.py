"""Step output limits (BuildKit's clipping rule) and the full log kept on disk."""

from __future__ import annotations

import time

from buildkitpy.solver.steplog import StepLog, _binary_size, log_path


def collect():
    sent: list[tuple[int, bytes]] = []
    return sent, lambda stream, data: sent.append((stream, data))


def test_size_limit_clips_once_and_keeps_everything(tmp_path):
    sent, send = collect()
    log = StepLog(send, tmp_path / "full.log", max_size=10, max_speed=-1)
    log.write(1, b"12345678")
    log.write(1, b"abcdef")
    log.write(1, b"more")
    log.write(2, b"err")
    log.close()
    assert sent == [(1, b"12345678"), (1, b"ab\n[output clipped, log limit 10B reached]\n"), (2, b"err")]
    assert (tmp_path / "full.log").read_bytes() == b"12345678abcdefmoreerr"


def test_speed_limit_names_the_rate(tmp_path):
    sent, send = collect()
    log = StepLog(send, None, max_size=2 * 1024 * 1024, max_speed=4)
    log.write(1, b"123456")
    assert sent == [(1, b"1234\n[output clipped, log limit 4B/s reached]\n")]
    time.sleep(1.1)  # a new second of budget: output flows again, clipping can be announced again
    log.write(1, b"xy")
    log.write(1, b"zzzzzzzzz")
    assert sent[1] == (1, b"xy") and sent[2][1].endswith(b"[output clipped, log limit 4B/s reached]\n")


def test_unlimited(tmp_path):
    sent, send = collect()
    log = StepLog(send, None, max_size=-1, max_speed=-1)
    log.write(1, b"x" * 5_000_000)
    assert sent == [(1, b"x" * 5_000_000)]


def test_binary_size_like_go():
    assert _binary_size(2 * 1024 * 1024) == "2MiB"
    assert _binary_size(200 * 1024) == "200KiB"
    assert _binary_size(1536 * 1024 * 1024) == "1.5GiB"


def test_log_path_trims_old_builds(tmp_path):
    for ref in ("a", "b", "c"):
        p = log_path(tmp_path, ref, "sha256:abc", keep_builds=2)
        p.write_text(ref)
        time.sleep(0.01)
    assert sorted(d.name for d in (tmp_path / "logs").iterdir()) == ["b", "c"]
