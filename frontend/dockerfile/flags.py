"""Instruction flags (``COPY --from=x``, ``RUN --mount=...``) and their validation.

The parser only peels ``--...`` words off the front of an instruction; each instruction declares the
flags it accepts here and ``parse`` checks the words against them, with BuildKit's error texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from buildkitpy.gocompat import with_suggestion

from .errors import DockerfileError


class FlagError(DockerfileError):
    """A flag the instruction does not accept, or one with a bad value."""


class FlagType(Enum):
    BOOL = "bool"
    STRING = "string"
    STRINGS = "strings"  # repeatable: every occurrence is kept


@dataclass
class Flag:
    name: str
    type: FlagType
    value: str = ""
    values: list[str] = field(default_factory=list)

    @property
    def is_true(self) -> bool:
        return self.value == "true"


class BFlags:
    """The flags given to one instruction, checked against the ones it declares."""

    def __init__(self, args: list[str]):
        self.args = list(args)
        self.flags: dict[str, Flag] = {}
        self.used: dict[str, Flag] = {}

    def _add(self, name: str, type_: FlagType, value: str = "") -> Flag:
        if name in self.flags:  # a programming error, never a user's
            raise ValueError(f"Duplicate flag defined: {name}")
        flag = Flag(name, type_, value)
        self.flags[name] = flag
        return flag

    def add_bool(self, name: str, default: bool = False) -> Flag:
        return self._add(name, FlagType.BOOL, "true" if default else "false")

    def add_string(self, name: str, default: str = "") -> Flag:
        return self._add(name, FlagType.STRING, default)

    def add_strings(self, name: str) -> Flag:
        return self._add(name, FlagType.STRINGS)

    def is_used(self, name: str) -> bool:
        return name in self.used

    def parse(self) -> None:
        """Assign the given words to the declared flags; raise ``FlagError`` on the first bad one.

        A bare ``--`` ends flag processing, as in POSIX utilities.
        """
        for arg in self.args:
            if arg == "--":
                return
            if not arg.startswith("--"):
                raise FlagError(f"arg should start with -- : {arg}")
            flag_name, has_value, value = arg.partition("=")
            name = flag_name[2:]
            flag = self.flags.get(name)
            if flag is None:
                msg = f"unknown flag: {flag_name}"
                raise FlagError(with_suggestion(msg, name, list(self.flags), True))
            if name in self.used and flag.type is not FlagType.STRINGS:
                raise FlagError(f"duplicate flag specified: {flag_name}")
            self.used[name] = flag
            if flag.type is FlagType.BOOL:
                # "--link" alone means true; "--link=" is an error.
                if has_value and value == "":
                    raise FlagError(f"missing a value on flag: {flag_name}")
                if value.lower() in ("true", ""):
                    flag.value = "true"
                elif value.lower() == "false":
                    flag.value = "false"
                else:
                    raise FlagError(f"expecting boolean value for flag {flag_name}, not: {value}")
            elif not has_value:
                raise FlagError(f"missing a value on flag: {flag_name}")
            elif flag.type is FlagType.STRING:
                flag.value = value
            else:
                flag.values.append(value)
