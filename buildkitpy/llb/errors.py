"""The error raised for LLB that cannot be built from the given input."""

from buildkitpy.errors import InvalidArgument


class LLBError(InvalidArgument):
    """Bad builder input (invalid reference, missing args, tmpfs used as a parent, ...).
    ``locations`` (``SourceLocation``s) are those of the op at fault, when it has any."""

    locations: tuple = ()
