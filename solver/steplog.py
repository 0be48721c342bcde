"""A step's output: streamed to ``Status`` within BuildKit's limits, kept whole on disk.

BuildKit clips what a step may send to clients, per output stream, at ``BUILDKIT_STEP_LOG_MAX_SIZE``
bytes (2 MiB) and at ``BUILDKIT_STEP_LOG_MAX_SPEED`` bytes per second of the step's life (200 KiB/s),
whichever is lower; ``-1`` disables a limit. When output starts being dropped the stream gets one
``[output clipped, log limit 2MiB reached]`` line (the speed form names the rate), and another if it
is dropped again after a stretch that fitted. We apply the same limits to the live stream and, unlike
BuildKit, keep every byte in ``<root>/logs/<build ref>/<vertex digest>.log`` so a clipped step's
output can still be read in full on the daemon host. Next to it, ``<vertex digest>.idx`` records each
write's stream, time and length (``INDEX_ENTRY``), so the build history can replay the complete output
with its streams and timestamps (``read_full_log``).
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_MAX_SIZE = 2 * 1024 * 1024
DEFAULT_MAX_SPEED = 200 * 1024
KEEP_BUILDS = 200  # newest build log folders kept under <root>/logs
INDEX_ENTRY = struct.Struct("<BQI")  # stream, unix time in ns, length of one write


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def _binary_size(n: int) -> str:
    """Go's ``%#g`` of a ``units.Bytes`` value, e.g. ``2MiB``, ``200KiB``, ``1.5GiB``."""
    value, unit = float(n), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:g}{unit}"


class _StreamLimit:
    """BuildKit's per-stream clipping rule."""

    def __init__(self, max_size: int, max_speed: int) -> None:
        self.max_size, self.max_speed = max_size, max_speed
        self.created = time.monotonic()
        self.size = 0
        self.clipping = False
        self.reason_speed = False

    def allowed(self, n: int) -> int:
        old = self.size
        self.size += n
        limit = -1
        self.reason_speed = False
        if self.max_speed != -1:
            limit = math.ceil(time.monotonic() - self.created) * self.max_speed
            self.reason_speed = True
        if limit == -1 or (self.max_size != -1 and limit > self.max_size):
            limit = self.max_size
            self.reason_speed = False
        if limit == -1:
            return n
        if limit < old:
            return 0
        return limit - old if self.size > limit else n

    def message(self) -> bytes:
        limit = f"{_binary_size(self.max_speed)}/s" if self.reason_speed else _binary_size(self.max_size)
        return f"\n[output clipped, log limit {limit} reached]\n".encode()


class StepLog:
    """Callables for a step's stdout and stderr (thread-safe)."""

    def __init__(self, send: Callable[[int, bytes], None], path: Path | None, *,
                 max_size: int | None = None, max_speed: int | None = None) -> None:
        self._send = send
        self._lock = threading.Lock()
        self.path = path
        self._file = None
        self._index = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "ab")  # noqa: SIM115 - closed in close()
            self._index = open(path.with_suffix(".idx"), "ab")  # noqa: SIM115 - closed in close()
        max_size = _env_int("BUILDKIT_STEP_LOG_MAX_SIZE", DEFAULT_MAX_SIZE) if max_size is None else max_size
        max_speed = _env_int("BUILDKIT_STEP_LOG_MAX_SPEED", DEFAULT_MAX_SPEED) if max_speed is None \
            else max_speed
        self._limits = {1: _StreamLimit(max_size, max_speed), 2: _StreamLimit(max_size, max_speed)}

    def writer(self, stream: int) -> Callable[[bytes], None]:
        return lambda data: self.write(stream, data)

    def write(self, stream: int, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self._file is not None:
                self._file.write(data)
            if self._index is not None:
                self._index.write(INDEX_ENTRY.pack(stream, time.time_ns(), len(data)))
            limit = self._limits[stream]
            n = limit.allowed(len(data))
            out = data[:n]
            if limit.clipping and n == len(data):
                limit.clipping = False
            if not limit.clipping and n != len(data):
                out += limit.message()
                limit.clipping = True
        if out:
            self._send(stream, out)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._index is not None:
                self._index.close()
                self._index = None


def read_full_log(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[int, int, bytes]]:
    """``(stream, unix time ns, data)`` pieces of a step's complete output, in write order (at most
    ``chunk`` bytes each). Without an index the whole file counts as stdout at its mtime."""
    index = path.with_suffix(".idx")
    with open(path, "rb") as f:
        if not index.exists():
            ts = path.stat().st_mtime_ns
            while data := f.read(chunk):
                yield 1, ts, data
            return
        with open(index, "rb") as idx:
            while entry := idx.read(INDEX_ENTRY.size):
                if len(entry) < INDEX_ENTRY.size:
                    return
                stream, ts, length = INDEX_ENTRY.unpack(entry)
                while length > 0:
                    data = f.read(min(length, chunk))
                    if not data:
                        return
                    length -= len(data)
                    yield stream, ts, data


def log_path(root: Path, build_ref: str, vertex_digest: str, *, keep_builds: int = KEEP_BUILDS) -> Path:
    """Where a step's full output is kept; old build folders are trimmed as new ones appear."""
    logs = root / "logs"
    folder = log_folder(root, build_ref)
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _trim(logs, keep_builds)
    return folder / (vertex_digest.removeprefix("sha256:") + ".log")


def log_folder(root: Path, build_ref: str) -> Path:
    """The folder of one build's step logs (``<vertex digest>.log`` files)."""
    return root / "logs" / (build_ref.replace("/", "_") or "unnamed")


def _trim(logs: Path, keep_builds: int) -> None:
    """Remove the oldest build folders beyond ``keep_builds``; the folders are only stat'ed when
    there are too many (every build's first step gets here)."""
    try:
        with os.scandir(logs) as entries:
            folders = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        if len(folders) <= keep_builds:
            return
        folders.sort(key=lambda p: os.stat(p).st_mtime)
    except FileNotFoundError:
        return
    for old in folders[:-keep_builds]:
        shutil.rmtree(old, ignore_errors=True)
