"""The daemon: flags, buildkitd.toml, serving."""
