"""Client sessions: the ``Control.Session`` byte pipe, the daemon's session manager, the client's
attachable server, and the small attachables (secrets, auth). See docs/architecture.md."""
