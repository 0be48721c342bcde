"""The git:// source (in progress)."""
