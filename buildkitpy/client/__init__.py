"""buildkitpy's client library and the buildctl-compatible ``buildkitpy`` CLI.

- :mod:`.connection` — ``connect(addr)`` and ``Client`` (workers, info, du, prune, solve, build)
- :mod:`.solve` — the build flows (gateway ``build`` like buildctl, plain ``solve``)
- :mod:`.options` — parsing of ``--output``, ``--secret``, ``--opt``, ``--local``, cache entries
- :mod:`.progress` — plain / tty / rawjson progress printers
- :mod:`.rpc_errors` — daemon errors with their typed details, printed like buildctl
- :mod:`.cli` — the command line
"""

from buildkitpy.client.connection import Client, TLSOptions, connect
from buildkitpy.client.options import CacheOptionsEntry, ExportEntry
from buildkitpy.client.rpc_errors import BuildkitError
from buildkitpy.client.solve import SolveOpt, SolveResult

__all__ = ["Client", "TLSOptions", "connect", "CacheOptionsEntry", "ExportEntry", "BuildkitError",
           "SolveOpt", "SolveResult"]
