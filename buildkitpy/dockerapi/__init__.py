"""The Docker Engine API (``--docker-addr``): ``docker build`` and the image endpoints around it.

``start`` runs it inside buildkitpyd. It talks to the daemon's Control API over a private unix
socket (``<root>/dockerapi/control.sock``), like the Docker Engine drives its embedded BuildKit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildkitpy.dockerapi.api import EngineAPI
    from buildkitpy.dockerapi.server import EngineAPIServer
    from buildkitpy.session.manager import SessionManager
    from buildkitpy.worker import Worker

CONTROL_SOCKET = "control.sock"


def state_dir(root: Path) -> Path:
    return Path(root) / "dockerapi"


def control_address(root: Path) -> str:
    return f"unix://{state_dir(root) / CONTROL_SOCKET}"


@dataclass
class DockerAPIHandle:
    server: EngineAPIServer
    api: EngineAPI
    addresses: list[str]

    async def close(self) -> None:
        await self.server.close()
        await self.api.control.close()
        self.api.images.close()


async def start(*, root: Path, worker: Worker, sessions: SessionManager, addresses: list[str],
                insecure_tcp: bool, tls: tuple[str, str, str] | None) -> DockerAPIHandle:
    """Listen on ``addresses`` (the Control API must already be serving ``control_address``)."""
    import shutil

    from buildkitpy.client.connection import Client
    from buildkitpy.dockerapi.api import EngineAPI
    from buildkitpy.dockerapi.imagestore import ImageStore
    from buildkitpy.dockerapi.server import EngineAPIServer, tls_context

    base = state_dir(root)
    shutil.rmtree(base / "builds", ignore_errors=True)  # left by a daemon that died mid-build
    shutil.rmtree(base / "tmp", ignore_errors=True)
    puller = worker.image_puller
    images = ImageStore(base, puller.store, puller.chains)
    worker.content_roots.append(images.held_digests)
    control = Client.connect(control_address(root))
    api = EngineAPI(root=base, control=control, images=images, worker=worker, sessions=sessions,
                    control_socket=str(base / CONTROL_SOCKET))
    server = EngineAPIServer(api.router())
    context = tls_context(*tls) if tls and tls[0] and tls[1] else None
    try:
        bound = [await server.listen(addr, tls=context, insecure=insecure_tcp) for addr in addresses]
    except BaseException:
        await server.close()
        await control.close()
        images.close()
        raise
    return DockerAPIHandle(server=server, api=api, addresses=bound)
