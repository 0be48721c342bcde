"""``buildkitpyd``: the daemon process. Flags follow buildkitd's."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc as collector
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from buildkitpy import __version__
from buildkitpy.api import gateway_pb2_grpc
from buildkitpy.daemon.config import DEFAULT_ADDRESS, Config, load_config
from buildkitpy.daemon.front import FrontServer, backend_path, tls_context
from buildkitpy.daemon.frontcalls import MethodTable
from buildkitpy.daemon.rootlock import RootLockedError, acquire_root_lock

log = logging.getLogger("buildkitpyd")

# BuildKit (via containerd defaults) allows 16 MiB messages both ways.
MAX_MESSAGE = 16 << 20
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
    # Clients (buildctl/buildx) ping idle connections; allow it as Go's server does.
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="buildkitpyd", description="buildkitpy daemon (BuildKit API)")
    p.add_argument("--addr", action="append", default=[],
                   help=f"listening address, unix:// or tcp:// (repeatable; default {DEFAULT_ADDRESS})")
    p.add_argument("--root", help="state directory (default /var/lib/buildkitpy)")
    p.add_argument("--config", type=Path, help="buildkitd.toml configuration file")
    p.add_argument("--debug", action="store_true", help="debug logging")
    p.add_argument("--tlscert", help="certificate file for TLS on tcp listeners")
    p.add_argument("--tlskey", help="key file for TLS on tcp listeners")
    p.add_argument("--tlscacert", help="CA to verify client certificates (enables mutual TLS)")
    p.add_argument("--allow-insecure-entitlement", action="append", default=[],
                   help="allow an insecure entitlement (network.host, security.insecure)")
    p.add_argument("--max-parallelism", type=int, default=0, help="maximum concurrent vertexes")
    p.add_argument("--docker-addr", action="append", default=[],
                   help="also serve the Docker Engine API (docker build, images) on unix:// or tcp:// "
                        "(repeatable; tcp needs --tlscert/--tlskey unless --docker-addr-insecure)")
    p.add_argument("--docker-addr-insecure", action="store_true",
                   help="allow a tcp --docker-addr without TLS (anyone who reaches it is root)")
    p.add_argument("--version", action="version", version=f"buildkitpyd {__version__}")
    return p.parse_args(argv)


class _Health(health_pb2_grpc.HealthServicer):
    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, context):
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        await asyncio.Event().wait()


def _claim_unix_path(path: Path) -> None:
    """Make ``path`` free for a new socket: a stale one (nobody answers) is removed, a live one is
    another daemon's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket from a previous run
        else:
            raise SystemExit(f"buildkitpyd: {path} is in use by another daemon")
        finally:
            probe.close()


async def _listen(front: FrontServer, addr: str, cfg: Config) -> str:
    """Open one of the daemon's addresses on the front server; returns its path or host:port."""
    url = urlparse(addr)
    if url.scheme == "unix":
        path = Path(url.path or url.netloc)
        _claim_unix_path(path)
        try:
            await front.listen_unix(str(path))
        except OSError as exc:  # a path too long for a unix socket, a directory missing, ...
            raise SystemExit(f"buildkitpyd: cannot listen on {addr}: {exc.strerror or exc}") from None
        return str(path)
    if url.scheme == "tcp":
        tls = None
        if cfg.tls.cert and cfg.tls.key:
            tls = tls_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca or None)
        try:
            port = await front.listen_tcp(url.hostname or "", url.port or 0, tls)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"buildkitpyd: cannot listen on {addr}: {exc}") from None
        return f"{url.hostname}:{port}"
    raise SystemExit(f"buildkitpyd: unsupported address {addr!r} (use unix:// or tcp://)")


def _add_internal_listener(server: grpc.aio.Server, path: Path) -> str:
    _claim_unix_path(path)
    if not server.add_insecure_port(f"unix:{path}"):
        raise SystemExit(f"buildkitpyd: cannot listen on {path}")
    return str(path)


def _worker_id(root: Path) -> str:
    path = root / "workerid"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        wid = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(25))
        path.write_text(wid)
        return wid


async def serve(cfg: Config, ready: asyncio.Event | None = None, *, docker_addrs: list[str] | None = None,
                docker_insecure: bool = False) -> None:
    from buildkitpy.control.gc import GarbageCollector, passes_from_policies
    from buildkitpy.control.service import ControlService
    from buildkitpy.daemon.workerinfo import default_gc_policies, worker_record
    from buildkitpy.frontend.dockerfile import builder as dockerfile_frontend
    from buildkitpy.gateway import container_frontend
    from buildkitpy.gateway.service import LLBBridgeService, jobs_resolver
    from buildkitpy.history.daemon import open_history
    from buildkitpy.jobs import JobRegistry
    from buildkitpy.session.manager import SessionManager, add_control_to_server
    from buildkitpy.solver.solver import Solver
    from buildkitpy.worker import open_worker

    dockerfile_frontend.register()
    cfg.root.mkdir(parents=True, exist_ok=True)
    try:
        root_lock = acquire_root_lock(cfg.root)  # before anything under the root is touched
    except RootLockedError as exc:
        raise SystemExit(f"buildkitpyd: {exc}") from None
    # Each resource's teardown is registered as soon as it exists: a failure at any point of the
    # start, or the end of the daemon, lets go of what is there, last acquired first.
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(root_lock.release)
        sessions = SessionManager()
        worker = open_worker(cfg, _worker_id(cfg.root), sessions)
        stack.callback(worker.close)
        solver = Solver(worker)
        stack.callback(solver.close)
        jobs = JobRegistry()

        def record():
            return worker_record(worker, cfg)

        history = open_history(cfg, worker, solver)
        stack.push_async_callback(history.close)
        gc = GarbageCollector(worker, solver.cache, cache_mounts=solver.cache_mounts.root,
                              cache_mount_generation=solver.cache_mounts.generation,
                              passes=passes_from_policies(default_gc_policies(cfg)) if cfg.gc else (),
                              busy=lambda: bool(jobs.active()), quiesce=jobs.quiesced)
        stack.push_async_callback(gc.wait_idle)
        server = grpc.aio.server(options=GRPC_OPTIONS)
        # The front serves the calls with one request message with these same handlers (frontcalls).
        methods = MethodTable()
        registering = methods.recording(server)
        control = ControlService(worker=worker, solver=solver, jobs=jobs, sessions=sessions,
                                 worker_record=record, history=history.recorder, gc=gc)
        add_control_to_server(control, registering)
        history.serve(registering)
        container_frontend.register(lambda: [record()])
        gateway_pb2_grpc.add_LLBBridgeServicer_to_server(
            LLBBridgeService(jobs_resolver(jobs), lambda: [record()], lambda: worker.executor is not None),
            registering)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(), registering)

        # The grpc.aio server listens privately; the daemon's addresses are the front server's,
        # which serves Control.Session and the calls with one request message itself and relays
        # the others to it (buildkitpy.daemon.front).
        backend_socket, backend_dir = backend_path(cfg.root)
        if backend_dir is not None:
            stack.callback(shutil.rmtree, backend_dir, ignore_errors=True)
        backend = _add_internal_listener(server, Path(backend_socket))
        if docker_addrs:
            from buildkitpy import dockerapi, exporter
            from buildkitpy.dockerapi import mobyexporter

            exporter.register("moby", mobyexporter.export)
            dockerapi.state_dir(cfg.root).mkdir(parents=True, exist_ok=True)
            internal_path = Path(urlparse(dockerapi.control_address(cfg.root)).path)
            internal = _add_internal_listener(server, internal_path)
        await server.start()
        stack.push_async_callback(server.stop, None)  # at once: the graceful stop below came first
        os.chmod(backend, 0o600)
        front = FrontServer(sessions, backend, methods)

        async def stop_serving() -> None:
            """No new calls; those running get 2 s, the builds they started 10 s more."""
            front.stop_listening()
            await asyncio.gather(server.stop(grace=2), front.finish_calls(grace=2))
            await front.close()
            if not await control.wait_solves(timeout=10):
                log.warning("builds still finishing 10 s after the gRPC server stopped; closing anyway")

        stack.push_async_callback(stop_serving)
        listening = [await _listen(front, addr, cfg) for addr in (cfg.addresses or [DEFAULT_ADDRESS])]
        for path in listening:
            if path.startswith("/"):
                os.chmod(path, 0o660)
        if docker_addrs:
            os.chmod(internal, 0o600)
            try:
                docker_api = await dockerapi.start(root=cfg.root, worker=worker, sessions=sessions,
                                                   addresses=docker_addrs,
                                                   insecure_tcp=docker_insecure,
                                                   tls=(cfg.tls.cert, cfg.tls.key, cfg.tls.ca))
            except Exception as exc:
                raise SystemExit(f"buildkitpyd: Engine API: {exc}") from None
            stack.push_async_callback(docker_api.close)
            log.info("Docker Engine API on %s", ", ".join(docker_api.addresses))
        log.info("buildkitpyd %s running on %s (root %s, worker %s, executor %s)", __version__,
                 ", ".join(cfg.addresses or [DEFAULT_ADDRESS]), cfg.root, worker.id,
                 "runc" if worker.executor is not None else "none (runc not found)")
        if ready is not None:
            ready.set()
        gc.trigger()  # a store left above the policies' limits (a changed config) shrinks at once

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("shutting down")


# Python's cyclic garbage collector, for a long-running daemon: young collections every this many
# net allocations (the default 700 ran one every few vertices of a build, each promoting survivors
# toward full collections, which scan the whole heap: a fifth of a 500-step cached build went to
# them, with pauses of 200 ms), and the modules loaded at start-up frozen out of every collection.
COLLECTOR_THRESHOLDS = (50_000, 50, 10)


def tune_collector() -> None:
    """For the daemon's process (``main``), not for a program that runs ``serve`` in its own."""
    from buildkitpy.control import service  # noqa: F401 - the bulk of the daemon's modules, to freeze

    collector.collect()
    collector.freeze()
    collector.set_threshold(*COLLECTOR_THRESHOLDS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config)
    if args.root:
        cfg.root = Path(args.root)
    if args.addr:
        cfg.addresses = args.addr
    cfg.debug = cfg.debug or args.debug
    if args.tlscert:
        cfg.tls.cert = args.tlscert
    if args.tlskey:
        cfg.tls.key = args.tlskey
    if args.tlscacert:
        cfg.tls.ca = args.tlscacert
    cfg.insecure_entitlements += args.allow_insecure_entitlement
    if args.max_parallelism:
        cfg.max_parallelism = args.max_parallelism
    logging.basicConfig(level=logging.DEBUG if cfg.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # hpack logs every header it encodes or decodes at DEBUG: several lines per call with --debug.
    logging.getLogger("hpack").setLevel(logging.INFO)
    for warning in cfg.warnings:
        log.warning("config: %s", warning)
    if shutil.which("runc") is None:
        log.warning("runc not found: RUN steps (exec ops) are unavailable")
    tune_collector()
    try:
        asyncio.run(serve(cfg, docker_addrs=args.docker_addr, docker_insecure=args.docker_addr_insecure))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
