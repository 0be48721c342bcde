"""The error raised for LLB that cannot be built from the given input."""

from buildkitpy.errors import InvalidArgument


class LLBError(InvalidArgument):
    """Bad builder input (invalid reference, missing args, tmpfs used as a parent, ...)."""
