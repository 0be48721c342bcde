"""Sans-I/O fsutil DiffCopy (BuildKit's file-transfer protocol), no sockets here.

- ``modes``: Go ``os.FileMode`` bits ↔ POSIX ``st_mode``.
- ``patterns``: include/exclude matching with moby/patternmatcher semantics.
- ``walk``: a directory → the ordered Stat stream a sender announces (FilterFS, FollowPaths).
- ``sender.Sender`` / ``receiver.Receiver``: the two protocol state machines, fed packets.
- ``validate``: checks on every incoming entry; ``apply.DiskWriter``: safe fd-relative writes;
  ``threaded.ThreadedSink``: the same writes from a worker thread.

``buildkitpy.session.filesync`` drives these over grpc.aio.
"""

from buildkitpy.fsutil.apply import DiskWriter
from buildkitpy.fsutil.errors import ApplyError, DiffCopyError, RemoteError
from buildkitpy.fsutil.patterns import PatternError, PatternMatcher
from buildkitpy.fsutil.receiver import Receiver
from buildkitpy.fsutil.sender import Sender
from buildkitpy.fsutil.walk import WalkEntry, WalkError, walk

__all__ = ["ApplyError", "DiffCopyError", "DiskWriter", "PatternError", "PatternMatcher", "Receiver",
           "RemoteError", "Sender", "WalkEntry", "WalkError", "walk"]
