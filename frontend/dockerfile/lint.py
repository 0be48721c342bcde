"""Build checks: BuildKit's Dockerfile lint rules, their configuration and the checks that need only
the parsed file.

The rules, messages and URLs are BuildKit's (``frontend/dockerfile/linter``), so ``docker buildx
build --call check`` and the build warnings read the same as with BuildKit. Which rules run is set by
the ``# check=skip=…;error=…;experimental=…`` directive, or instead by the
``BUILDKIT_DOCKERFILE_CHECK`` build arg; a ``# check=`` comment right above an instruction adds to it
for that instruction. Experimental rules only run when asked for.

Checks that depend on what a stage contains at that point (variables, workdir, base stages) run
during conversion (:mod:`.convert_dispatch` calls :class:`Linter` there); the ones here look at the
parse tree only, in BuildKit's order: empty continuation lines, then per instruction, then stage names
and instruction casing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from buildkitpy.gocompat import suggest

from .parser import DockerfileParseError, Node, ParseResult

# (start line, end line) of an instruction; BuildKit reports one range per line
Lines = tuple[int, int]
WarnFunc = Callable[["Rule", str, Lines | None], None]


class LintConfigError(ValueError):
    """A ``check`` directive or ``BUILDKIT_DOCKERFILE_CHECK`` value that does not parse."""


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    url: str
    experimental: bool = False


_URL = "https://docs.docker.com/go/dockerfile/rule/"


def _rule(name: str, slug: str, description: str, *, experimental: bool = False, url: bool = True) -> Rule:
    return Rule(name, description, _URL + slug + "/" if url else "", experimental)


STAGE_NAME_CASING = _rule("StageNameCasing", "stage-name-casing", "Stage names should be lowercase")
FROM_AS_CASING = _rule("FromAsCasing", "from-as-casing",
                       "The 'as' keyword should match the case of the 'from' keyword")
NO_EMPTY_CONTINUATION = _rule("NoEmptyContinuation", "no-empty-continuation",
                              "Empty continuation lines will become errors in a future release")
CONSISTENT_INSTRUCTION_CASING = _rule(
    "ConsistentInstructionCasing", "consistent-instruction-casing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)")
DUPLICATE_STAGE_NAME = _rule("DuplicateStageName", "duplicate-stage-name", "Stage names should be unique")
RESERVED_STAGE_NAME = _rule("ReservedStageName", "reserved-stage-name",
                            "Reserved words should not be used as stage names")
JSON_ARGS_RECOMMENDED = _rule(
    "JSONArgsRecommended", "json-args-recommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals")
MAINTAINER_DEPRECATED = _rule(
    "MaintainerDeprecated", "maintainer-deprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author")
UNDEFINED_ARG_IN_FROM = _rule("UndefinedArgInFrom", "undefined-arg-in-from",
                              "FROM command must use declared ARGs")
WORKDIR_RELATIVE_PATH = _rule(
    "WorkdirRelativePath", "workdir-relative-path",
    "Relative workdir without an absolute workdir declared within the build can have unexpected "
    "results if the base image changes")
UNDEFINED_VAR = _rule("UndefinedVar", "undefined-var", "Variables should be defined before their use")
MULTIPLE_INSTRUCTIONS_DISALLOWED = _rule(
    "MultipleInstructionsDisallowed", "multiple-instructions-disallowed",
    "Multiple instructions of the same type should not be used in the same stage")
LEGACY_KEY_VALUE_FORMAT = _rule("LegacyKeyValueFormat", "legacy-key-value-format",
                                "Legacy key/value format with whitespace separator should not be used")
INVALID_BASE_IMAGE_PLATFORM = _rule("InvalidBaseImagePlatform", "",
                                    "Base image platform does not match expected target platform",
                                    url=False)
REDUNDANT_TARGET_PLATFORM = _rule(
    "RedundantTargetPlatform", "redundant-target-platform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior")
SECRETS_USED_IN_ARG_OR_ENV = _rule("SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env",
                                   "Sensitive data should not be used in the ARG or ENV commands")
INVALID_DEFAULT_ARG_IN_FROM = _rule(
    "InvalidDefaultArgInFrom", "invalid-default-arg-in-from",
    "Default value for global ARG results in an empty or invalid base image name")
FROM_PLATFORM_FLAG_CONST_DISALLOWED = _rule("FromPlatformFlagConstDisallowed",
                                            "from-platform-flag-const-disallowed",
                                            "FROM --platform flag should not use a constant value")
COPY_IGNORED_FILE = _rule("CopyIgnoredFile", "copy-ignored-file",
                          "Attempting to Copy file that is excluded by .dockerignore")
INVALID_DEFINITION_DESCRIPTION = _rule(
    "InvalidDefinitionDescription", "invalid-definition-description",
    "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. "
    "If this is not intended to be a description comment, add an empty line or comment between the "
    "instruction and the comment.", experimental=True)
EXPOSE_PROTO_CASING = _rule("ExposeProtoCasing", "expose-proto-casing",
                            "Protocol in EXPOSE instruction should be lowercase")
EXPOSE_INVALID_FORMAT = _rule(
    "ExposeInvalidFormat", "expose-invalid-format",
    "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an "
    "error in a future release")

RULES: tuple[Rule, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Rule))


# --- configuration ---------------------------------------------------------------------------------


@dataclass
class LintConfig:
    skip_all: bool = False
    skip: frozenset[str] = frozenset()
    experimental_all: bool = False
    experimental: frozenset[str] = frozenset()
    error: bool = False


def _go_parse_bool(text: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def parse_lint_options(text: str) -> LintConfig:
    """``skip=A,B|all;error=true;experimental=C|all`` (BuildKit's ``ParseLintOptions``)."""
    text = text.strip()
    cfg = LintConfig()
    if not text:
        return cfg
    for part in text.split(";", 2):
        key, sep, value = part.partition("=")
        if not sep:
            raise LintConfigError(f"invalid check option {part!r}".replace("'", '"'))
        key = key.strip()
        if key == "skip":
            value = value.strip()
            if value == "all":
                cfg.skip_all = True
            else:
                cfg.skip = frozenset(r.strip() for r in value.split(","))
        elif key == "experimental":
            value = value.strip()
            if value == "all":
                cfg.experimental_all = True
            else:
                cfg.experimental = frozenset(r.strip() for r in value.split(","))
        elif key == "error":
            try:
                cfg.error = _go_parse_bool(value.strip())
            except ValueError as e:
                raise LintConfigError(f'failed to parse check option "{part}": {e}') from None
        else:
            raise LintConfigError(f'invalid check option "{key}"')
    return cfg


# a directive written as an ordinary comment, ``#`` already stripped (BuildKit's DirectiveParser with
# an empty comment prefix); Go's \s is ASCII white space and ``$`` the end of the text
_CHECK_COMMENT = re.compile(r"[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")


def _check_comment(comment: str) -> str | None:
    """The value of a ``check=…`` directive written as an ordinary comment (up to the first blank)."""
    m = _CHECK_COMMENT.match(comment)
    if m is None or m.group(1).lower() != "check":
        return None
    return m.group(2).split(" ", 1)[0]


@dataclass
class LintWarning:
    rule: Rule
    detail: str
    lines: Lines | None


class Linter:
    """Runs rules under one configuration; ``for_comments`` derives the linter of one instruction.

    Every linter derived from one root shares its list of warnings and of rules that fired, so
    ``error()`` covers the whole Dockerfile.
    """

    def __init__(self, config: LintConfig, warn: WarnFunc | None = None) -> None:
        self.config = config
        self.warnings: list[LintWarning] = []
        self.called: list[str] = []
        self._warn = warn

    def run(self, rule: Rule, detail: str, lines: Lines | None) -> None:
        c = self.config
        if rule.experimental:
            if not c.experimental_all and rule.name not in c.experimental:
                return
        elif c.skip_all or rule.name in c.skip:
            return
        self.called.append(rule.name)
        self.warnings.append(LintWarning(rule, detail or rule.description, lines))
        if self._warn is not None:
            self._warn(rule, detail or rule.description, lines)

    def merged(self, other: LintConfig) -> Linter:
        c = self.config
        merged = LintConfig(
            skip_all=c.skip_all or other.skip_all,
            skip=c.skip | other.skip,
            experimental_all=c.experimental_all or other.experimental_all,
            experimental=c.experimental | other.experimental,
            error=c.error,
        )
        clone = Linter(merged, self._warn)
        clone.warnings, clone.called = self.warnings, self.called
        return clone

    def for_comments(self, comments: Iterable[str]) -> Linter:
        """The linter for an instruction: the first ``check=`` comment above it is merged in."""
        for comment in comments:
            value = _check_comment(comment)
            if value is None:
                continue
            try:
                return self.merged(parse_lint_options(value))
            except LintConfigError:
                return self
        return self

    def error(self) -> str | None:
        """With ``error=true``: the message failing the build when any rule fired."""
        if not self.config.error or not self.called:
            return None
        return "lint violation found for rules: " + ", ".join(dict.fromkeys(self.called))


def linter_config(opts: Mapping[str, str], dockerfile: bytes) -> LintConfig:
    """``BUILDKIT_DOCKERFILE_CHECK`` when given (it replaces the directive), else ``# check=``.

    Raises :class:`LintConfigError` with BuildKit's wording for a value that does not parse.
    """
    from .parser import parse_directive

    arg = opts.get("build-arg:BUILDKIT_DOCKERFILE_CHECK")
    if arg is not None:
        try:
            return parse_lint_options(arg)
        except LintConfigError as e:
            raise LintConfigError(f"failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: {e}") from None
    d = parse_directive("check", dockerfile)
    try:
        return parse_lint_options(d.value if d is not None else "")
    except LintConfigError as e:
        raise LintConfigError(f"failed to parse check options: {e}") from None


# --- checks on the parse tree ------------------------------------------------------------------------

_RESERVED_STAGE_NAMES = ("context", "scratch")


def _is_self_consistent(s: str) -> bool:
    return s == s.lower() or s == s.upper()


def check_parse_tree(ast: ParseResult, linter: Linter) -> None:
    """The checks BuildKit makes while parsing: empty continuation lines, per-instruction rules, stage
    names and instruction casing. Stops at the first instruction that does not parse (the conversion
    reports it)."""
    from .instructions import parse_instruction

    for w in ast.warnings:
        linter.run(NO_EMPTY_CONTINUATION, "Empty continuation line", (w.line, w.line))
    stages: list[tuple[str, str, Lines]] = []  # (stage name, FROM keyword as written, lines)
    commands: list[tuple[str, Lines]] = []
    for node in ast.nodes:
        _check_node(node, linter.for_comments(node.comments))
        try:
            parse_instruction(node)
        except DockerfileParseError:
            return
        lines = (node.start_line, node.end_line)
        if node.keyword == "from":
            name = node.args[2].lower() if len(node.args) == 3 else ""
            stages.append((name, node.value, lines))
        if stages or node.keyword != "arg":
            commands.append((node.value, lines))
    seen: set[str] = set()
    for name, _, lines in stages:
        if not name:
            continue
        if name in _RESERVED_STAGE_NAMES:
            linter.run(RESERVED_STAGE_NAME,
                       f'Stage name should not use the same name as reserved stage "{name}"', lines)
        if name in seen:
            linter.run(DUPLICATE_STAGE_NAME, f'Duplicate stage name "{name}", stage names should be unique',
                       lines)
        seen.add(name)
    lower = sum(1 for c, _ in commands if _is_self_consistent(c) and c == c.lower())
    upper = sum(1 for c, _ in commands if _is_self_consistent(c) and c != c.lower())
    majority_lower = lower > upper
    for cmd, lines in commands:
        if majority_lower and cmd.lower() != cmd:
            casing = "lowercase"
        elif not majority_lower and cmd.upper() != cmd:
            casing = "uppercase"
        else:
            continue
        linter.run(CONSISTENT_INSTRUCTION_CASING,
                   f"Command '{cmd}' should match the case of the command majority ({casing})", lines)


def _check_node(node: Node, linter: Linter) -> None:
    lines = (node.start_line, node.end_line)
    if node.keyword == "maintainer":
        linter.run(MAINTAINER_DEPRECATED, "Maintainer instruction is deprecated in favor of using label",
                   lines)
    elif node.keyword == "from":
        args = node.args
        if len(args) == 3 and args[2] != args[2].lower():
            linter.run(STAGE_NAME_CASING, f"Stage name '{args[2]}' should be lowercase", lines)
        if len(args) >= 3 and _is_self_consistent(node.value):
            as_lower = args[1] == args[1].lower()
            as_upper = args[1] == args[1].upper()
            if (node.value == node.value.lower() and not as_lower) or (
                node.value != node.value.lower() and not as_upper
            ):
                linter.run(FROM_AS_CASING, f"'{args[1]}' and '{node.value}' keywords' casing do not match",
                           lines)
        if len(args) == 3 and args[1].lower() == "as":
            _definition_description("FROM", [args[2].lower()], node.comments, lines, linter)
    elif node.keyword == "arg" and node.args:
        keys = [a.split("=", 1)[0] for a in node.args]
        _definition_description("ARG", keys, node.comments, lines, linter)


def _definition_description(instruction: str, keys: list[str], comments: list[str], lines: Lines,
                            linter: Linter) -> None:
    if not comments or not keys:
        return
    if comments[-1].split(" ")[0] in keys:
        return
    example = keys[0] if len(keys) == 1 else "<arg_key>"
    linter.run(INVALID_DEFINITION_DESCRIPTION,
               f"Comment for {instruction} should follow the format: `# {example} <description>`", lines)


# --- helpers for the checks made during conversion ---------------------------------------------------

_SECRET_DENY = re.compile(
    r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)")
_SECRET_ALLOW = re.compile(r"(?i)(?:_|^)(?:public|file|version)(?:_|$)")


def check_secret_key(linter: Linter, instruction: str, key: str, lines: Lines) -> None:
    if _SECRET_DENY.search(key) and not _SECRET_ALLOW.search(key):
        linter.run(SECRETS_USED_IN_ARG_OR_ENV,
                   f'Do not use ARG or ENV instructions for sensitive data ({instruction} "{key}")', lines)


def check_undefined_vars(linter: Linter, unmatched: Iterable[str], declared: Iterable[str],
                         env_keys: list[str], lines: Lines, skip: Iterable[str] = ()) -> None:
    """``UndefinedVar`` for each variable an expansion did not find, unless an ARG declared it."""
    left = set(unmatched) - set(declared) - set(skip)
    for name in sorted(left):
        match = suggest(name, env_keys, True)
        detail = f"Usage of undefined variable '${name}'"
        if match:
            detail += f" (did you mean ${match}?)"
        linter.run(UNDEFINED_VAR, detail, lines)


def check_undefined_from_args(linter: Linter, unmatched: Iterable[str], known: list[str],
                              lines: Lines) -> None:
    for name in sorted(set(unmatched)):
        if name in known:
            continue
        match = suggest(name, known, True)
        detail = f"FROM argument '{name}' is not declared"
        if match:
            detail += f" (did you mean {match}?)"
        linter.run(UNDEFINED_ARG_IN_FROM, detail, lines)


def check_expose(linter: Linter, port: str, lines: Lines) -> None:
    """``[ip:][host:]port[/proto]``: an upper-case protocol, an IP or a host port (a spec that does
    not parse is left to the conversion's error)."""
    parts = port.split(":")
    ip = ":".join(parts[:-2]) if len(parts) > 2 else ""
    host = parts[-2] if len(parts) > 1 else ""
    container, _, proto = parts[-1].partition("/")
    if not container or proto.lower() not in ("", "tcp", "udp", "sctp"):
        return
    if proto != proto.lower():
        linter.run(EXPOSE_PROTO_CASING,
                   f"Defined protocol '{port}' in EXPOSE instruction should be lowercase", lines)
    if ip or host:
        linter.run(EXPOSE_INVALID_FORMAT,
                   f"EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'",
                   lines)
