"""Sans-I/O fsutil DiffCopy: Go FileMode bits, directory walk → Stat stream, sender and receiver.

Nothing here touches sockets; ``buildkitpy.session.filesync`` drives these over grpc.aio.
"""
