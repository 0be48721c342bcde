"""Variable expansion of exactly the instruction fields BuildKit's frontend expands.

Expanded with the stage's environment (ENV and ARG values so far): ENV and LABEL keys and values,
ADD/COPY sources, destination, ``--chown``, ``--chmod`` (and ADD's ``--checksum``), heredoc bodies of
ADD/COPY unless the delimiter was quoted, WORKDIR, USER, VOLUME, STOPSIGNAL, EXPOSE (split into
fields), ARG defaults and every RUN ``--mount`` value. FROM's base name and ``--platform`` are
expanded too, but with the global ARGs only. Left alone: RUN/CMD/ENTRYPOINT/HEALTHCHECK/SHELL
commands (the container's shell expands those), MAINTAINER, ONBUILD (expanded when it fires),
``COPY --from`` (no expansion allowed) and the ``--exclude`` patterns.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace

from .instructions import (
    AddCommand,
    ArgCommand,
    CopyCommand,
    EnvCommand,
    ExposeCommand,
    FromCommand,
    Instruction,
    KeyValuePair,
    LabelCommand,
    RunCommand,
    SourceContent,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
)
from .mounts import parse_mount
from .shell import ExpansionBudget, Lex, ShellExpansionError

COPY_FROM_EXPANSION_ERROR = (
    "variable expansion is not supported for --from, define a new stage with FROM using ARG from "
    "global scope as a workaround"
)


def expand(
    instruction: Instruction,
    env: Mapping[str, str],
    *,
    escape_token: str = "\\",
    unmatched: set[str] | None = None,
    budget: ExpansionBudget | None = None,
) -> Instruction:
    """Return a copy of ``instruction`` with BuildKit's expansions applied.

    ``env`` is the environment before the instruction (so ``ENV A=1 B=$A`` sees the old ``A``).
    Names referenced but not set are added to ``unmatched`` when given (BuildKit's UndefinedVar
    lint); ``budget`` is the conversion's (``shell.ExpansionBudget``). Raises
    ``ShellExpansionError`` (or ``MountError`` for a RUN mount) like BuildKit.
    """
    # A shallow copy: every field expanded below is replaced by a new value (the pairs, heredoc
    # bodies and ARG defaults by new objects), never changed in place, so the parsed instruction
    # stays as written. (A deep copy of every instruction was a tenth of converting a long file.)
    ins = copy.copy(instruction)
    lex = Lex(escape_token, budget=budget)

    def word(value: str) -> str:
        result = lex.process(value, env)
        if unmatched is not None:
            unmatched.update(result.unmatched)
        return result.result

    def kvps(pairs: list[KeyValuePair]) -> list[KeyValuePair]:
        return [replace(kv, key=word(kv.key), value=word(kv.value)) for kv in pairs]

    if isinstance(ins, EnvCommand):
        ins.env = kvps(ins.env)
    elif isinstance(ins, LabelCommand):
        ins.labels = kvps(ins.labels)
    elif isinstance(ins, AddCommand | CopyCommand):
        if isinstance(ins, CopyCommand) and ins.from_:
            # BuildKit checks this with an empty environment: any "$name" at all is refused.
            if Lex(escape_token).process(ins.from_, {}).result != ins.from_:
                raise ShellExpansionError(COPY_FROM_EXPANSION_ERROR)
        ins.chown = word(ins.chown)
        ins.chmod = word(ins.chmod)
        if isinstance(ins, AddCommand):
            ins.checksum = word(ins.checksum)
        ins.source_paths = [word(p) for p in ins.source_paths]
        ins.dest_path = word(ins.dest_path)
        # Heredoc bodies: always "\" as escape and quotes kept, as a shell would treat the file.
        raw = Lex("\\", skip_process_quotes=True, budget=budget)

        def body(content: SourceContent) -> SourceContent:
            if not content.expand:
                return content
            result = raw.process(content.data, env)
            if unmatched is not None:
                unmatched.update(result.unmatched)
            return replace(content, data=result.result)
        ins.source_contents = [body(c) for c in ins.source_contents]
    elif isinstance(ins, WorkdirCommand):
        ins.path = word(ins.path)
    elif isinstance(ins, UserCommand):
        ins.user = word(ins.user)
    elif isinstance(ins, VolumeCommand):
        ins.volumes = [word(v) for v in ins.volumes]
    elif isinstance(ins, StopSignalCommand):
        ins.signal = word(ins.signal)
    elif isinstance(ins, ExposeCommand):
        ins.ports = [p for port in ins.ports for p in lex.process(port, env).words]
    elif isinstance(ins, ArgCommand):
        # Only defaults: a value passed with --build-arg replaces the default unexpanded.
        ins.args = [arg if arg.value is None else replace(arg, value=word(arg.value)) for arg in ins.args]
    elif isinstance(ins, RunCommand):
        ins.mounts = [parse_mount(spec, word) for spec in ins.mount_specs]
    elif isinstance(ins, FromCommand):
        ins.base_name = word(ins.base_name)
        if ins.platform:
            ins.platform = word(ins.platform)
    return ins
