"""``State``: an immutable pointer to an op output plus the settings later ops inherit
(env, working dir, user, platform, network, ...), like client/llb's ``State``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Unpack

from buildkitpy.api import ops_pb2

from . import pathutil
from .constraints import OpOptions
from .platform import Platform
from .vertex import Output

if TYPE_CHECKING:
    from buildkitpy.api.ops_pb2 import Definition

    from .exec import ExecState, RunMount, RunOptions
    from .fileop import FileAction

NetworkMode = Literal["sandbox", "host", "none"]
SecurityMode = Literal["sandbox", "insecure"]

NETWORK_MODES: dict[str, ops_pb2.NetMode] = {"sandbox": ops_pb2.UNSET, "host": ops_pb2.HOST,
                                             "none": ops_pb2.NONE}
SECURITY_MODES: dict[str, ops_pb2.SecurityMode] = {"sandbox": ops_pb2.SANDBOX, "insecure": ops_pb2.INSECURE}

# keys of the inherited settings
ENV, DIR, ARGS, USER, HOSTNAME, PLATFORM = "env", "dir", "args", "user", "hostname", "platform"
NETWORK, SECURITY, EXTRA_HOSTS, ULIMITS = "network", "security", "extrahosts", "ulimits"
CGROUP_PARENT, VALID_EXIT_CODES = "cgroupparent", "validexitcodes"


class State:
    """Immutable: every method returns a new ``State``. ``scratch()`` has no output."""

    __slots__ = ("_output", "_values")

    def __init__(self, output: Output | None = None, values: Mapping[str, Any] | None = None) -> None:
        self._output = output
        self._values: Mapping[str, Any] = dict(values or {})

    @classmethod
    def from_output(cls, output: Output | None) -> State:
        """A fresh state for ``output``: working dir ``/`` and the output's platform."""
        return cls(output).dir("/")._ensure_platform()

    # ---- graph ----
    @property
    def output(self) -> Output | None:
        return self._output

    @property
    def is_scratch(self) -> bool:
        return self._output is None

    def with_output(self, output: Output | None) -> State:
        """Same settings, different output (what every op does to its input state)."""
        return State(output, self._values)._ensure_platform()

    def _ensure_platform(self) -> State:
        if self._output is not None and self._output.platform is not None:
            return self._with(PLATFORM, self._output.platform)
        return self

    def _with(self, key: str, value: Any) -> State:
        return State(self._output, {**self._values, key: value})

    def with_value(self, key: str, value: Any) -> State:
        """Attach an arbitrary value (frontends use this for their own bookkeeping)."""
        return self._with(key, value)

    def value(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def reset(self, other: State) -> State:
        """This output with ``other``'s settings (only the output's platform is kept)."""
        return State(self._output, other._values)._ensure_platform()

    # ---- settings ----
    def add_env(self, key: str, value: str) -> State:
        """Set (or replace) an environment variable; a replaced one moves to the end, as in Go."""
        env = [(k, v) for k, v in self._values.get(ENV, ()) if k != key]
        return self._with(ENV, (*env, (key, value)))

    def del_env(self, key: str) -> State:
        return self._with(ENV, tuple((k, v) for k, v in self._values.get(ENV, ()) if k != key))

    def get_env(self, key: str) -> str | None:
        return dict(self._values.get(ENV, ())).get(key)

    def env(self) -> list[tuple[str, str]]:
        return list(self._values.get(ENV, ()))

    def dir(self, path: str) -> State:
        """Working directory; a relative path is joined to the current one."""
        if not pathutil.is_abs(path):
            path = pathutil.join(self.get_dir() or "/", path)
        return self._with(DIR, path)

    def get_dir(self) -> str:
        return self._values.get(DIR, "")

    def user(self, user: str) -> State:
        return self._with(USER, user)

    def get_user(self) -> str:
        return self._values.get(USER, "")

    def hostname(self, hostname: str) -> State:
        return self._with(HOSTNAME, hostname)

    def get_hostname(self) -> str:
        return self._values.get(HOSTNAME, "")

    def network(self, mode: NetworkMode) -> State:
        if mode not in NETWORK_MODES:
            raise ValueError(f"invalid network mode {mode!r}: expected one of {sorted(NETWORK_MODES)}")
        return self._with(NETWORK, mode)

    def get_network(self) -> NetworkMode:
        return self._values.get(NETWORK, "sandbox")

    def security(self, mode: SecurityMode) -> State:
        if mode not in SECURITY_MODES:
            raise ValueError(f"invalid security mode {mode!r}: expected one of {sorted(SECURITY_MODES)}")
        return self._with(SECURITY, mode)

    def get_security(self) -> SecurityMode:
        return self._values.get(SECURITY, "sandbox")

    def with_platform(self, platform: Platform | str) -> State:
        if isinstance(platform, str):
            platform = Platform.parse(platform)
        return self._with(PLATFORM, platform.normalized())

    def get_platform(self) -> Platform | None:
        return self._values.get(PLATFORM)

    def add_extra_host(self, host: str, ip: str) -> State:
        return self._with(EXTRA_HOSTS, (*self._values.get(EXTRA_HOSTS, ()), (host, ip)))

    def add_ulimit(self, name: str, soft: int, hard: int) -> State:
        return self._with(ULIMITS, (*self._values.get(ULIMITS, ()), (name, soft, hard)))

    def with_cgroup_parent(self, cgroup_parent: str) -> State:
        return self._with(CGROUP_PARENT, cgroup_parent)

    def with_image_config(self, config: bytes | str | Mapping[str, Any]) -> State:
        """Apply an OCI image config's Env, WorkingDir and platform (``WithImageConfig``)."""
        img = json.loads(config) if isinstance(config, (bytes, str)) else config
        cfg = img.get("config") or {}
        st = self
        for entry in cfg.get("Env") or ():
            key, _, value = entry.partition("=")
            if key:
                st = st.add_env(key, value)
        st = st.dir(cfg.get("WorkingDir") or "")
        if img.get("architecture") and img.get("os"):
            st = st.with_platform(Platform(img["os"], img["architecture"], img.get("variant", ""),
                                           img.get("os.version", ""), tuple(img.get("os.features") or ())))
        return st

    # ---- ops ----
    def run(self, args: Sequence[str] | str, *, mounts: Iterable[RunMount] = (),
            **options: Unpack[RunOptions]) -> ExecState:
        """Run a command with this state as the root filesystem; see :func:`buildkitpy.llb.exec.run`."""
        from .exec import run

        return run(self, args, mounts=mounts, **options)

    def file(self, action: FileAction, **options: Unpack[OpOptions]) -> State:
        """Apply a chain of file actions (``mkdir(...).mkfile(...)``) to this state."""
        from .fileop import file_op

        return file_op(self, action, **options)

    def marshal(self, **options: Any) -> Definition:
        from .marshal import marshal

        return marshal(self, **options)

    def __repr__(self) -> str:
        out = "scratch" if self._output is None else type(self._output.vertex).__name__
        return f"<State {out} dir={self.get_dir()!r}>"


def scratch() -> State:
    """The empty filesystem."""
    return State.from_output(None)
