"""``buildkitpy``: a buildctl-compatible command line client.

Same global flags, commands, option syntax, output tables and error texts as buildctl for what we
implement. Options we do not implement fail with "... is not supported yet" and exit code 2; other
errors print ``error: <message>`` (after any Dockerfile snippet) and exit 1.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import NoReturn, TextIO

import anyio

from buildkitpy.api import control_pb2, ops_pb2, worker_pb2
from buildkitpy.client import options
from buildkitpy.client.connection import (
    DEFAULT_ADDRESS,
    AddressError,
    Client,
    TLSOptions,
    UnsupportedAddress,
)
from buildkitpy.client.options import NotSupportedYet, OptionError
from buildkitpy.client.progress import MODES, make_printer
from buildkitpy.client.rpc_errors import BuildkitError, print_error
from buildkitpy.client.solve import SolveOpt, SolveResult, build, ignore_cache_everywhere, solve
from buildkitpy.client.textformat import (
    TabWriter,
    format_bytes,
    format_bytes_short,
    format_go_duration,
    format_go_time,
    format_platform,
    parse_go_duration,
)

EXIT_FAILURE = 1
EXIT_NOT_SUPPORTED = 2

# Cache exporter/importer types the daemon implements; everything else is refused up front.
SUPPORTED_CACHE_EXPORTS: frozenset[str] = frozenset({"registry", "local", "inline", "s3", "gha"})
SUPPORTED_CACHE_IMPORTS: frozenset[str] = frozenset({"registry", "local", "s3", "gha"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's default exits 2 with usage; keep usage short
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        sys.exit(EXIT_NOT_SUPPORTED)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="buildkitpy", description="build utility (buildctl-compatible)")
    p.add_argument("--debug", action="store_true", help="enable debug output in logs")
    p.add_argument("--addr", default=os.environ.get("BUILDKIT_HOST") or DEFAULT_ADDRESS,
                   help="buildkitd address (default: $BUILDKIT_HOST or %(default)s)")
    p.add_argument("--log-format", default="text", help="log formatter: json or text")
    p.add_argument("--tlsservername", default="", help="buildkitd server name for certificate validation")
    p.add_argument("--tlscacert", default="", help="CA certificate for validation")
    p.add_argument("--tlscert", default="", help="client certificate")
    p.add_argument("--tlskey", default="", help="client key")
    p.add_argument("--tlsdir", default="", help="directory containing CA certificate, client "
                   "certificate, and client key (ca.pem, cert.pem, key.pem or ca.crt, tls.crt, tls.key)")
    p.add_argument("--timeout", type=int, default=5, help="timeout backend connection after value seconds")
    p.add_argument("--wait", action="store_true", help="block RPCs until the connection becomes available")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    b = sub.add_parser("build", aliases=["b"], help="build")
    b.add_argument("--output", "-o", action="append", default=[],
                   help="Define exports for build result, e.g. "
                   "--output type=image,name=docker.io/username/image,push=true")
    b.add_argument("--progress", default="auto",
                   help="Set type of progress (auto, plain, tty, rawjson). "
                   "Use plain to show container output")
    b.add_argument("--trace", default="", help="Path to trace file. Defaults to no tracing.")
    b.add_argument("--local", action="append", default=[], help="Allow build access to the local directory")
    b.add_argument("--oci-layout", action="append", default=[],
                   help="Allow build access to the local OCI layout")
    b.add_argument("--frontend", default="", help="Define frontend used for build")
    b.add_argument("--opt", action="append", default=[],
                   help="Define custom options for frontend, e.g. --opt target=foo --opt build-arg:foo=bar")
    b.add_argument("--no-cache", action="store_true", help="Disable cache for all the vertices")
    b.add_argument("--export-cache", action="append", default=[], help="Export build cache")
    b.add_argument("--import-cache", action="append", default=[], help="Import build cache")
    b.add_argument("--secret", action="append", default=[],
                   help="Secret value exposed to the build. Format id=secretname,src=filepath")
    b.add_argument("--allow", action="append", default=[],
                   help="Allow extra privileged entitlement, e.g. network.host, security.insecure, device")
    b.add_argument("--ssh", action="append", default=[], help="Allow forwarding SSH agent to the builder")
    b.add_argument("--metadata-file", default="",
                   help="Output build metadata (e.g., image digest) to a file as JSON")
    b.add_argument("--source-policy-file", default="", help="Read source policy file from a JSON file")
    b.add_argument("--proxy-network", action="store_true", help="Run build with proxy network enforcement")
    b.add_argument("--ref-file", default="", help="Write build ref to a file")
    b.add_argument("--registry-auth-tlscontext", action="append", default=[],
                   help="Overwrite TLS configuration when authenticating with registries")
    b.add_argument("--debug-json-cache-metrics", default="", help="Where to output json cache metrics")
    # Hidden: plain Control.Solve (Definition or Frontend) without the LLBBridge gateway part.
    b.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)

    du = sub.add_parser("du", help="disk usage")
    du.add_argument("--filter", "-f", action="append", default=[], help="Filter records")
    du.add_argument("--verbose", "-v", action="store_true", help="Verbose output")
    du.add_argument("--format", default="", help="Format the output using the given Go template")

    pr = sub.add_parser("prune", help="clean up build cache")
    pr.add_argument("--keep-duration", default="", help="Keep data newer than this limit")
    pr.add_argument("--keep-storage", type=float, default=0.0, help="Keep data below this limit (in MB)")
    pr.add_argument("--keep-storage-min", type=float, default=0.0,
                    help="Always allow data above this limit (in MB)")
    pr.add_argument("--free-storage", type=float, default=0.0, help="Keep free data below this limit (in MB)")
    pr.add_argument("--filter", "-f", action="append", default=[], help="Filter records")
    pr.add_argument("--all", action="store_true", help="Include internal/frontend references")
    pr.add_argument("--verbose", "-v", action="store_true", help="Verbose output")
    pr.add_argument("--format", default="", help="Format the output using the given Go template")

    sub.add_parser("dial-stdio", help="proxy the stdio stream to the daemon connection (for buildx's "
                   "docker-container and kubernetes drivers)")

    dbg = sub.add_parser("debug", help="debug utilities")
    dsub = dbg.add_subparsers(dest="debug_command", metavar="COMMAND", parser_class=_Parser)
    w = dsub.add_parser("workers", help="list workers")
    w.add_argument("--filter", "-f", action="append", default=[], help="containerd-style filter string slice")
    w.add_argument("--verbose", "-v", action="store_true", help="Verbose output")
    w.add_argument("--format", default="", help="Format the output using the given Go template")
    i = dsub.add_parser("info", help="display internal information")
    i.add_argument("--format", default="", help="Format the output using the given Go template")
    return p


# -- shared --------------------------------------------------------------------------------------

def tls_options(args: argparse.Namespace) -> TLSOptions:
    if args.tlsdir:
        if args.tlscacert or args.tlscert or args.tlskey:
            raise OptionError("cannot specify tlsdir and tlscacert/tlscert/tlskey at the same time")
        return TLSOptions.from_dir(args.tlsdir, args.tlsservername)
    return TLSOptions(ca_cert=args.tlscacert, cert=args.tlscert, key=args.tlskey,
                      server_name=args.tlsservername)


async def _open_client(args: argparse.Namespace) -> Client:
    client = Client.connect(args.addr, tls_options(args))
    if args.wait:
        await client.wait()
    return client


def _refuse_format(value: str) -> None:
    if value:
        raise NotSupportedYet("--format (Go templates) is not supported yet")


# -- debug workers / info ------------------------------------------------------------------------

def join_platforms(platforms: Sequence) -> str:
    return ",".join(format_platform(p.OS, p.Architecture, p.Variant) for p in platforms)


def print_workers(workers: Sequence[worker_pb2.WorkerRecord], out: TextIO, *, verbose: bool) -> None:
    tw = TabWriter(out, 1, 8, 1, "\t")
    if not verbose:
        tw.write("ID\tPLATFORMS\n")
        for wr in workers:
            tw.write(f"{wr.ID}\t{join_platforms(wr.platforms)}\n")
        tw.flush()
        return
    for wr in workers:
        v = wr.BuildkitVersion
        tw.write(f"ID:\t{wr.ID}\n")
        tw.write(f"Platforms:\t{join_platforms(wr.platforms)}\n")
        tw.write(f"BuildKit:\t{v.package} {v.version} {v.revision}\n")
        if v.dockerfileVersion:
            tw.write(f"Dockerfile:\t{v.dockerfileVersion}\n")
        tw.write("Labels:\n")
        for k in sorted(wr.Labels):
            tw.write(f"\t{k}:\t{wr.Labels[k]}\n")
        if wr.CDIDevices:
            tw.write("Devices:\n")
            for d in wr.CDIDevices:
                tw.write(f"\tName:\t{d.Name}\n")
                if d.OnDemand:
                    tw.write("\tOnDemand:\ttrue\n")
                else:
                    tw.write(f"\tAutoAllow:\t{str(d.AutoAllow).lower()}\n")
                for k in sorted(d.Annotations):
                    tw.write(f"\tAnnotations:\t{k}:\t{d.Annotations[k]}\n")
            tw.write("\n")
        for n, rule in enumerate(wr.GCPolicy):
            tw.write(f"GC Policy rule#{n}:\n")
            tw.write(f"\tAll:\t{str(rule.all).lower()}\n")
            if rule.filters:
                tw.write(f"\tFilters:\t{' '.join(rule.filters)}\n")
            if rule.keepDuration > 0:
                tw.write(f"\tKeep duration:\t{format_go_duration(rule.keepDuration)}\n")
            if rule.reservedSpace > 0:
                tw.write(f"\tReserved space:\t{format_bytes_short(rule.reservedSpace)}\n")
            if rule.minFreeSpace > 0:
                tw.write(f"\tMinimum free space:\t{format_bytes_short(rule.minFreeSpace)}\n")
            if rule.maxUsedSpace > 0:
                tw.write(f"\tMaximum used space:\t{format_bytes_short(rule.maxUsedSpace)}\n")
        tw.write("\n")
    tw.flush()


def print_info(version: worker_pb2.BuildkitVersion, out: TextIO) -> None:
    tw = TabWriter(out, 0, 0, 1, " ")
    tw.write(f"BuildKit:\t{version.package} {version.version} {version.revision}\n")
    if version.dockerfileVersion:
        tw.write(f"Dockerfile:\t{version.dockerfileVersion}\n")
    tw.flush()


# -- du / prune ----------------------------------------------------------------------------------

def _bool(v: bool) -> str:
    return "true" if v else "false"


def print_usage_verbose(records: Sequence[control_pb2.UsageRecord], tw: TabWriter) -> None:
    for r in records:
        tw.write(f"ID:\t{r.ID}\n")
        if r.Parents:
            tw.write(f"Parents:\t{';'.join(r.Parents)}\n")
        tw.write(f"Created at:\t{format_go_time(r.CreatedAt)}\n")
        tw.write(f"Mutable:\t{_bool(r.Mutable)}\n")
        tw.write(f"Reclaimable:\t{_bool(not r.InUse)}\n")
        tw.write(f"Shared:\t{_bool(r.Shared)}\n")
        tw.write(f"Size:\t{format_bytes(r.Size)}\n")
        if r.Description:
            tw.write(f"Description:\t{r.Description}\n")
        tw.write(f"Usage count:\t{r.UsageCount}\n")
        if r.HasField("LastUsedAt"):
            tw.write(f"Last used:\t{format_go_time(r.LastUsedAt)}\n")
        if r.RecordType:
            tw.write(f"Type:\t{r.RecordType}\n")
        tw.write("\n")
    tw.flush()


USAGE_TABLE_HEADER = "ID\tRECLAIMABLE\tSIZE\tLAST ACCESSED\n"


def usage_table_row(r: control_pb2.UsageRecord) -> str:
    rid = r.ID + ("*" if r.Mutable else "")
    size = format_bytes(r.Size) + ("*" if r.Shared else "")
    return f"{rid:<71}\t{_bool(not r.InUse):<11}\t{size}\t\n"


def print_usage_table(records: Sequence[control_pb2.UsageRecord], tw: TabWriter) -> None:
    tw.write(USAGE_TABLE_HEADER)
    for r in records:
        tw.write(usage_table_row(r))
    tw.flush()


def print_usage_summary(records: Sequence[control_pb2.UsageRecord], tw: TabWriter) -> None:
    total = reclaimable = shared = 0
    for r in records:
        if r.Size > 0:
            total += r.Size
            if not r.InUse:
                reclaimable += r.Size
        if r.Shared:
            shared += r.Size
    if shared > 0:
        tw.write(f"Shared:\t{format_bytes(shared)}\n")
        tw.write(f"Private:\t{format_bytes(total - shared)}\n")
    tw.write(f"Reclaimable:\t{format_bytes(reclaimable)}\n")
    tw.write(f"Total:\t{format_bytes(total)}\n")
    tw.flush()


async def cmd_du(args: argparse.Namespace, out: TextIO) -> int:
    _refuse_format(args.format)
    async with await _open_client(args) as client:
        records = await client.disk_usage(args.filter)
    tw = TabWriter(out, 1, 8, 1, "\t")
    if args.verbose:
        print_usage_verbose(records, tw)
    else:
        print_usage_table(records, tw)
    if not args.filter:
        print_usage_summary(records, tw)
    return 0


async def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    _refuse_format(args.format)
    try:
        keep_duration = parse_go_duration(args.keep_duration) if args.keep_duration else 0
    except ValueError as exc:
        raise OptionError(f'invalid value "{args.keep_duration}" for flag -keep-duration: {exc}') from None
    total = 0
    first = True
    async with await _open_client(args) as client:
        tw = TabWriter(out, 1, 8, 1, "\t")
        async for record in client.prune(
                filters=args.filter, all=args.all, keep_duration_ns=keep_duration,
                reserved_space=int(args.keep_storage_min * 1e6), max_used_space=int(args.keep_storage * 1e6),
                min_free_space=int(args.free_storage * 1e6)):
            total += record.Size
            if args.verbose:
                print_usage_verbose([record], tw)
            else:
                if first:
                    tw.write(USAGE_TABLE_HEADER)
                    first = False
                tw.write(usage_table_row(record))
                tw.flush()
    tw = TabWriter(out, 1, 8, 1, "\t")
    tw.write(f"Total:\t{format_bytes(total)}\n")
    tw.flush()
    return 0


# -- build ---------------------------------------------------------------------------------------

def _refuse_unsupported_build_flags(args: argparse.Namespace) -> None:
    refused = [
        ("--oci-layout", args.oci_layout), ("--trace", args.trace),
        ("--source-policy-file", args.source_policy_file),
        ("--registry-auth-tlscontext", args.registry_auth_tlscontext),
        ("--debug-json-cache-metrics", args.debug_json_cache_metrics),
    ]
    for flag, value in refused:
        if value:
            raise NotSupportedYet(f"{flag} is not supported yet")


def parse_build_options(args: argparse.Namespace) -> SolveOpt:
    """All of ``build``'s flags → SolveOpt (parse errors first, then unsupported features)."""
    if args.progress not in MODES:
        raise OptionError(f"invalid progress mode {args.progress}")
    ssh = options.parse_ssh(args.ssh)
    secrets = options.load_secrets([options.parse_secret(s) for s in args.secret])
    entitlements = options.validate_allow(args.allow)
    exports = options.parse_outputs(args.output)
    cache_exports = options.parse_export_cache(args.export_cache)
    cache_imports = options.parse_import_cache(args.import_cache)
    frontend_attrs = options.parse_opts(args.opt)
    local_dirs = options.parse_locals(args.local)
    _refuse_unsupported_build_flags(args)
    for entry in cache_exports:
        if entry.type not in SUPPORTED_CACHE_EXPORTS:
            raise NotSupportedYet(f"--export-cache type={entry.type} is not supported yet")
    for entry in cache_imports:
        if entry.type not in SUPPORTED_CACHE_IMPORTS:
            raise NotSupportedYet(f"--import-cache type={entry.type} is not supported yet")
    if args.frontend and args.no_cache:
        frontend_attrs["no-cache"] = ""
    return SolveOpt(exports=exports, local_dirs=local_dirs, frontend=args.frontend,
                    frontend_attrs=frontend_attrs, cache_exports=cache_exports, cache_imports=cache_imports,
                    secrets=secrets, entitlements=entitlements, proxy_network=args.proxy_network, ssh=ssh)


def read_definition(stream, *, no_cache: bool) -> ops_pb2.Definition:
    """LLB from stdin (a marshalled ``pb.Definition``, as ``llb.WriteTo`` writes it)."""
    data = stream.read()
    definition = ops_pb2.Definition()
    try:
        definition.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise OptionError(f"failed to parse input: {exc}") from exc
    if not getattr(definition, "def"):
        raise OptionError("empty definition sent to build. Specify --frontend instead?")
    if no_cache:
        ignore_cache_everywhere(definition)
    return definition


def metadata_json(exporter_response: dict[str, str]) -> str:
    """buildctl's ``--metadata-file`` content: base64 JSON objects inlined, the rest as strings."""
    out: dict[str, object] = {}
    for key in sorted(exporter_response):
        value = exporter_response[key]
        try:
            decoded = base64.b64decode(value, validate=True)
            parsed = json.loads(decoded, object_pairs_hook=dict)
        except (binascii.Error, ValueError):
            out[key] = value
            continue
        out[key] = parsed if isinstance(parsed, dict) and parsed else value
    return go_json_dumps_indent(out)


def go_json_dumps_indent(value: object) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def print_subrequest_result(metadata: dict[str, bytes], out: TextIO) -> None:
    if "result.txt" in metadata:
        out.write(metadata["result.txt"].decode(errors="replace"))
        return
    for key, value in metadata.items():
        if key.startswith("result."):
            out.write(f"{key}\n{value.decode(errors='replace')}\n")


async def cmd_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    opt = parse_build_options(args)
    definition = None
    if not args.frontend:
        if sys.stdin.isatty():
            raise OptionError("please specify --frontend or pipe LLB definition to stdin")
        definition = read_definition(sys.stdin.buffer, no_cache=args.no_cache)
    printer = make_printer(args.progress, err)
    opt.ref = opt.ref or _new_ref()
    result: SolveResult | None = None
    try:
        async with await _open_client(args) as client:
            run = solve if args.direct else build
            try:
                result = await run(client, opt, definition=definition, on_status=printer.update)
            except BuildkitError:
                printer.done()
                await _print_rebuilds(args, client, opt.ref, err)
                raise
            except BaseException:
                printer.done()
                raise
            printer.done()
            await _print_rebuilds(args, client, opt.ref, err)
    finally:
        if args.ref_file:
            _atomic_write(args.ref_file, opt.ref.encode())
    if args.metadata_file and result.exporter_response is not None:
        _atomic_write(args.metadata_file, metadata_json(result.exporter_response).encode())
    print_subrequest_result(result.gateway_metadata, out)
    return 0


async def _print_rebuilds(args: argparse.Namespace, client, ref: str, err: TextIO) -> None:  # noqa: ANN001
    """With ``--progress plain``: why each step that ran did not come from the cache."""
    if args.progress == "plain":
        from buildkitpy.client.rebuilds import print_rebuilds

        await print_rebuilds(client, ref, err)


def _new_ref() -> str:
    from buildkitpy.client.solve import new_build_ref

    return new_build_ref()


# -- main ----------------------------------------------------------------------------------------

async def run_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command in ("build", "b"):
        return await cmd_build(args, out, err)
    if args.command == "du":
        return await cmd_du(args, out)
    if args.command == "prune":
        return await cmd_prune(args, out)
    if args.command == "debug":
        if args.debug_command == "workers":
            _refuse_format(args.format)
            async with await _open_client(args) as client:
                workers = await client.list_workers(args.filter)
            print_workers(workers, out, verbose=args.verbose)
            return 0
        if args.debug_command == "info":
            _refuse_format(args.format)
            async with await _open_client(args) as client:
                version = await client.info()
            print_info(version, out)
            return 0
    raise OptionError("a command is required (build, du, prune, debug workers, debug info)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None or (args.command == "debug" and args.debug_command is None):
        parser.print_help(sys.stderr)
        return EXIT_NOT_SUPPORTED
    try:
        if args.log_format not in ("text", "json", ""):
            raise OptionError(f'unsupported log type "{args.log_format}"')
        if args.command == "dial-stdio":
            from buildkitpy.client.dialstdio import dial_stdio

            dial_stdio(args.addr, args.timeout)
            return 0
        return anyio.run(run_command, args, sys.stdout, sys.stderr)
    except (NotSupportedYet, UnsupportedAddress) as exc:
        sys.stdout.flush()
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_NOT_SUPPORTED
    except (BuildkitError, OptionError, AddressError, ValueError, OSError) as exc:
        sys.stdout.flush()
        print_error(exc, sys.stderr, debug=args.debug)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
