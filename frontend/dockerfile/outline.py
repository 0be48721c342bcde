"""What a build target takes from outside (``frontend.outline``): the build args it uses, the secrets
and SSH sockets its RUN steps mount, gathered while converting as BuildKit's ``outlineCapture``.

Each stage starts from the global ARGs (or from its base stage's capture at that point); its own ARGs,
the global ARGs its FROM line uses and its mounts are added as it is dispatched. The outline of the
target walks the target, its base and the stages it copies or mounts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .subrequests import OutlineArg, OutlineMount

if TYPE_CHECKING:
    from .convert_dispatch import StageState

Lines = tuple[int, int]


@dataclass
class ArgInfo:
    key: str
    value: str | None
    doc: str
    lines: Lines
    deps: set[str] = field(default_factory=set)


@dataclass
class StageOutline:
    all_args: dict[str, ArgInfo] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    secrets: dict[str, tuple[bool, Lines]] = field(default_factory=dict)
    ssh: dict[str, tuple[bool, Lines]] = field(default_factory=dict)

    def clone(self) -> StageOutline:
        return StageOutline(dict(self.all_args), set(self.used), dict(self.secrets), dict(self.ssh))

    def mark_all_used(self) -> None:
        """An ARG a used ARG's default refers to is used too."""
        visited: set[str] = set()
        stack = list(self.used)
        while stack:
            k = stack.pop()
            if k in visited:
                continue
            visited.add(k)
            self.used.add(k)
            a = self.all_args.get(k)
            if a is not None:
                stack.extend(a.deps)


def _related(target: StageState) -> list[StageState]:
    """The target, then (depth first) its base and the stages it depends on."""
    out: list[StageState] = []
    seen: set[int] = set()

    def visit(d: StageState) -> None:
        if id(d) in seen:
            return
        seen.add(id(d))
        out.append(d)
        if d.base is not None:
            visit(d.base)
        for dep in d.deps:
            visit(dep)

    visit(target)
    return out


def collect(target: StageState) -> tuple[list[OutlineArg], list[OutlineMount], list[OutlineMount]]:
    args: list[OutlineArg] = []
    secrets: list[OutlineMount] = []
    ssh: list[OutlineMount] = []
    seen_args: set[str] = set()
    seen_secrets: set[str] = set()
    seen_ssh: set[str] = set()
    for d in _related(target):
        o = d.outline
        o.mark_all_used()
        for k in sorted(o.used):
            a = o.all_args.get(k)
            if a is not None and k not in seen_args:
                args.append(OutlineArg(a.key, a.value, a.doc, a.lines))
                seen_args.add(k)
        for name, (required, lines) in o.secrets.items():
            if name not in seen_secrets:
                secrets.append(OutlineMount(name, required, lines))
                seen_secrets.add(name)
        for name, (required, lines) in o.ssh.items():
            if name not in seen_ssh:
                ssh.append(OutlineMount(name, required, lines))
                seen_ssh.add(name)
    args.sort(key=lambda a: a.lines[0])
    secrets.sort(key=lambda m: m.lines[0])
    ssh.sort(key=lambda m: m.lines[0])
    return args, secrets, ssh
