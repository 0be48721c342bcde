"""Prints a sample LLB definition (protobuf bytes) for ``buildkitpy build`` / ``buildctl build``.

The graph copies the ``context`` local directory into ``/src`` of a fresh tree and adds a generated
file and a symlink. It sticks to file operations so it needs no base image.

    .venv/bin/python hack/sample_llb.py | .venv/bin/buildkitpy build --local context=. \\
        --output type=local,dest=/tmp/out
"""

from __future__ import annotations

import sys

from buildkitpy import llb


def sample() -> llb.State:
    context = llb.local("context", exclude_patterns=["__pycache__", "*.pyc"])
    return (llb.scratch()
            .file(llb.mkdir("/src", 0o755))
            .file(llb.copy(context, "/", "/src/", copy_dir_contents=True))
            .file(llb.mkfile("/hello.txt", 0o644, b"built by buildkitpy\n"))
            .file(llb.symlink("hello.txt", "/README")))


if __name__ == "__main__":
    sys.stdout.buffer.write(sample().marshal().SerializeToString())
