"""The Control service (moby.buildkit.v1.Control)."""
