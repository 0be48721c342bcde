"""Snapshots: overlayfs layers and mounts under the daemon root."""
