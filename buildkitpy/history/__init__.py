"""Build history: one record per build, as BuildKit keeps them (``Control.ListenBuildHistory``).

- ``store.HistoryStore``: active records in memory, completed ones in SQLite under
  ``<root>/history`` with their blobs (logs, trace, error, attestations) in a content store of their
  own; ``[history]`` limits; the event stream listeners follow.
- ``recorder.BuildRecording``: what a Solve fills in while it runs (frontend, exporters, results,
  attachments from exporters and attestations) and completes at the end.
- ``statusblob``: the logs blob (``application/vnd.buildkit.status.v0``), built from the build's
  progress with every step's complete output instead of the clipped live stream.
- ``content_service``: containerd's ``Content`` API (read-only) over the history blobs and the
  image content store, which is how clients read those blobs.
- ``filters``: ``ListenBuildHistory`` filters (``ref``, ``status``, ``repository``, times).
- ``tracing``: OpenTelemetry spans of the daemon and the client's spans, kept per trace id.
- ``rebuild``: why a step ran instead of hitting the cache.
"""
