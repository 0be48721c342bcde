"""Runs a sink's disk work in a worker thread so the event loop keeps moving packets.

Creating files is the slow part of a transfer on many filesystems (hundreds of µs per create on
some disks); done inline it stalls every other task of the daemon's loop and serialises network and
disk. ``ThreadedSink`` queues the calls in order to one thread. Whether an entry needs its contents
is decided up front from the Stat (regular file, not a hardlink), which is what ``DiskWriter``
answers too. The queue is bounded, so a slow disk slows the transfer instead of buffering it in
memory; a failure in the thread is raised by the next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from buildkitpy.api import fsutil_stat_pb2
from buildkitpy.fsutil import modes
from buildkitpy.fsutil.apply import DiskWriter

_QUEUE_DEPTH = 256
_STOP = object()


class ThreadedSink:
    def __init__(self, writer: DiskWriter) -> None:
        self.writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(_QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="fsutil-disk-writer", daemon=True)
        self._thread.start()

    # EntrySink ------------------------------------------------------------------------------

    def entry(self, entry_id: int, stat: fsutil_stat_pb2.Stat) -> bool:
        self._put(self.writer.entry, entry_id, stat)
        return modes.is_regular(stat.mode) and not stat.linkname

    def data(self, entry_id: int, chunk: bytes) -> None:
        self._put(self.writer.data, entry_id, chunk)

    def file_done(self, entry_id: int) -> None:
        self._put(self.writer.file_done, entry_id)

    def finish(self) -> None:
        done = threading.Event()
        self._put(self.writer.finish)
        self._put(done.set)
        self._stop_and_join()
        self._raise_if_failed()

    def close(self) -> None:
        self._stop_and_join()
        self.writer.close()

    # -----------------------------------------------------------------------------------------

    @property
    def files_written(self) -> int:
        return self.writer.files_written

    @property
    def bytes_written(self) -> int:
        return self.writer.bytes_written

    def _put(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise_if_failed()
        if not self._thread.is_alive():
            raise RuntimeError("disk writer thread is not running")
        self._queue.put((fn, args))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop_and_join(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain after a failure
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the event-loop side
                self._error = exc
