"""``python -m buildkitpy.frontend.dockerfile``: the Dockerfile frontend as a frontend image's
entrypoint, talking LLBBridge over stdin/stdout (see :mod:`buildkitpy.gateway.grpcclient`)."""

from __future__ import annotations

import asyncio
import logging
import sys

from buildkitpy.gateway.grpcclient import run_from_environment

from .builder import build


def main() -> int:
    # stdout carries the protocol: logs go to stderr only
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="dockerfile-frontend: %(levelname)s %(message)s")
    return asyncio.run(run_from_environment(build))


if __name__ == "__main__":
    sys.exit(main())
