"""buildkitpy: a container image build daemon that speaks BuildKit's gRPC API."""

__version__ = "0.1.0"
