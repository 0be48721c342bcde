"""Dockerfile text to a flat list of instruction nodes, with BuildKit's parser semantics.

The parser only splits the file into logical lines and each line into a keyword, flags and arguments
(JSON or shell form, per keyword); it knows nothing about what instructions mean. Unknown keywords
parse fine here and are rejected by ``instructions.py``, as in BuildKit, so ``ONBUILD`` triggers are
only checked when they fire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from buildkitpy.gocompat import is_space, quote, trim_left_space, trim_space

from .errors import DockerfileError
from .shell import Lex, ShellExpansionError

DEFAULT_ESCAPE_TOKEN = "\\"

# bufio.Scanner's default limit: a line, newline included, must fit into 64 KiB.
MAX_LINE_BYTES = 64 * 1024

EMPTY_CONTINUATION_URL = "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/"

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
# Go's RE2: \d and \s are ASCII-only and "$" is end of text, hence the spelled-out classes and \Z.
_HEREDOC = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_VALID_DIRECTIVES = ("syntax", "escape", "check")

# Instructions whose arguments may hold heredocs, and those that may wrap such an instruction.
_HEREDOC_KEYWORDS = frozenset({"add", "copy", "run"})
_HEREDOC_COMPOUND_KEYWORDS = frozenset({"onbuild"})


class DockerfileParseError(DockerfileError):
    """A Dockerfile BuildKit would reject before building anything.

    ``str()`` is the message BuildKit shows (``dockerfile parse error on line 3: unknown instruction:
    FOO`` for instruction errors, the bare text for errors of the parser itself). ``reason`` is the
    message without the ``dockerfile parse error on line N:`` prefix, ``line``/``end_line`` the 1-based
    lines of the offending instruction and ``text`` its source text when known.
    """

    def __init__(
        self,
        message: str,
        line: int,
        *,
        end_line: int | None = None,
        text: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.line = line
        self.end_line = end_line if end_line is not None and end_line >= line else line
        self.text = text
        self.reason = reason if reason is not None else message


@dataclass
class Heredoc:
    """One ``<<NAME`` document: ``expand`` is false when any part of the name was quoted, ``chomp``
    marks ``<<-`` (leading tabs are stripped from the body when it is used, not when parsed)."""

    name: str
    content: str = ""
    expand: bool = True
    chomp: bool = False
    fd: int = 0


@dataclass
class Node:
    """One instruction as parsed.

    ``args`` are the parsed arguments: the JSON array items for exec form, one string for shell form
    RUN/CMD/ENTRYPOINT/SHELL, white-space separated words for ADD/COPY/VOLUME/FROM/EXPOSE, and
    ``key, value, sep`` triples for ENV/LABEL (``sep`` is ``"="`` or ``""`` for the legacy
    ``ENV key value`` form). ONBUILD keeps its trigger in ``sub`` instead.
    """

    keyword: str
    value: str
    original: str
    args: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    json: bool = False
    heredocs: list[Heredoc] = field(default_factory=list)
    start_line: int = 0
    end_line: int = 0
    comments: list[str] = field(default_factory=list)
    sub: Node | None = None

    def dump(self) -> str:
        """BuildKit's s-expression dump (``Node.Dump``), handy for comparing parse trees."""
        out = self.value.lower()
        if self.flags:
            out += " [" + " ".join(quote(f) for f in self.flags) + "]"
        if self.sub is not None:
            out += " (" + self.sub.dump() + ")"
        for arg in self.args:
            out += " " + quote(arg)
        return out.strip()


@dataclass
class ParseWarning:
    """A non-fatal finding (today only empty continuation lines)."""

    short: str
    detail: str
    url: str
    line: int


@dataclass
class Directive:
    """A ``# name=value`` parser directive from the top of the file."""

    name: str
    value: str
    line: int


@dataclass
class ParseResult:
    nodes: list[Node]
    escape_token: str = DEFAULT_ESCAPE_TOKEN
    warnings: list[ParseWarning] = field(default_factory=list)
    directives: list[Directive] = field(default_factory=list)

    @property
    def start_line(self) -> int:
        return self.nodes[0].start_line if self.nodes else 0

    @property
    def end_line(self) -> int:
        return self.nodes[-1].end_line if self.nodes else 0

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d.name == name:
                return d.value
        return None


class _NotJSONArray(Exception):
    pass


class _NotStringArray(Exception):
    pass


class _ParseFailure(Exception):
    """Raised by the per-keyword parsers; located and wrapped by ``parse``."""


# --- directives --------------------------------------------------------------------------------------


class _DirectiveParser:
    """Scans ``# key=value`` lines until the first line that is not one.

    Any other line ends the scan: an instruction, an ordinary comment, an unknown key, and also an
    empty line, so a blank line before ``# escape=`` makes it an ordinary comment.
    """

    def __init__(self, comment: str = "#", line: int = 0):
        self.comment = comment
        self.line = line
        self.seen: set[str] = set()
        self.done = False

    def parse_line(self, line: str) -> Directive | None:
        self.line += 1
        if self.done:
            return None
        if not line.startswith(self.comment):
            self.done = True
            return None
        m = _DIRECTIVE.match(trim_left_space(line[len(self.comment) :]))
        if not m:
            self.done = True
            return None
        key = m.group(1).lower()
        if key not in _VALID_DIRECTIVES:
            self.done = True
            return None
        if key in self.seen:
            raise _ParseFailure(f"only one {key} parser directive can be used")
        self.seen.add(key)
        return Directive(key, m.group(2), self.line)


def parse_directive(key: str, data: bytes | str) -> Directive | None:
    """Find directive ``key`` the way the frontend reads ``syntax`` and ``check`` (``ParseDirective``).

    Unlike ``parse``, a ``#!`` first line is skipped and lines are not left-trimmed first.
    """
    text = _decode(data)
    line = 0
    first, nl, rest = text.partition("\n")
    if first.startswith("#!"):
        text, line = rest, 1
    dp = _DirectiveParser("#", line)
    for raw in text.split("\n"):
        if dp.done:
            break
        try:
            d = dp.parse_line(raw.removesuffix("\r"))
        except _ParseFailure:
            break
        if d is not None and d.name == key:
            return d
    return None


# --- lines -------------------------------------------------------------------------------------------


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    # surrogateescape keeps invalid UTF-8 bytes through the round trip instead of failing.
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")


def _split_lines(data: bytes | str) -> tuple[list[str], bool]:
    """Lines with their ``\\n`` kept, cut before the first line the Go scanner refuses as too long."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    parts = raw.split(b"\n")
    lines: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if last and not part:
            break
        # A line with its newline may fill the 64 KiB buffer; a final line without one must leave a
        # byte free, as the scanner only sees EOF on the read after the buffer filled.
        if len(part) + (0 if last else 1) > MAX_LINE_BYTES - (1 if last else 0):
            return lines, True
        lines.append(part.decode("utf-8", "surrogateescape") + ("" if last else "\n"))
    return lines, False


def _trim_newline(s: str) -> str:
    return s.rstrip("\r\n")


def _is_comment(line: str) -> bool:
    return trim_left_space(line).startswith("#")


def _continuation_regex(escape: str) -> re.Pattern[str]:
    # The escape token ends a line (optionally followed by blanks) unless it is itself escaped; like
    # BuildKit, an escaped escape before a continuation ("foo \\\") is not recognised.
    t = re.escape(escape)
    return re.compile(rf"([^{t}]){t}[ \t]*\Z|^{t}[ \t]*\Z")


# --- splitting a logical line --------------------------------------------------------------------------


def _extract_builder_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """Peel ``--flag[=value]`` words off the front; return the rest of the line and the flags.

    Quotes and escapes inside flags are removed; a bare ``--`` ends the flags.
    """
    words: list[str] = []
    phase = "spaces"
    buf: list[str] = []
    quote_ch = ""
    blank_ok = False
    n = len(line)
    pos = 0
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if is_space(ch):
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = "word"
        if pos == n:
            word = "".join(buf)
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == "word":
            if is_space(ch):
                word = "".join(buf)
                phase = "spaces"
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                buf.clear()
                blank_ok = False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote_ch = ch
                blank_ok = True
                phase = "quote"
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            buf.append(ch)
            pos += 1
            continue
        # phase == "quote"
        if ch == quote_ch:
            phase = "word"
            pos += 1
            continue
        if ch == escape:
            if pos + 1 == n:
                phase = "word"
                pos += 1
                continue
            pos += 1
            ch = line[pos]
        buf.append(ch)
        pos += 1
    return "", words


def _split_command(line: str, escape: str) -> tuple[str, list[str], str]:
    parts = _WHITESPACE.split(trim_space(line), maxsplit=1)
    args: str = ""
    flags: list[str] = []
    if len(parts) == 2:
        args, flags = _extract_builder_flags(parts[1], escape)
    return parts[0], flags, trim_space(args)


def _parse_words(rest: str, escape: str) -> list[str]:
    """Split on white space outside quotes, keeping quotes and escapes (removed later by expansion)."""
    words: list[str] = []
    phase = "spaces"
    quote_ch = ""
    blank_ok = False
    buf: list[str] = []
    n = len(rest)
    pos = 0
    while pos <= n:
        ch = rest[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if is_space(ch):
                pos += 1
                continue
            phase = "word"
        if pos == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == "word":
            if is_space(ch):
                phase = "spaces"
                if blank_ok or buf:
                    words.append("".join(buf))
                buf.clear()
                blank_ok = False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote_ch = ch
                blank_ok = True
                phase = "quote"
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
            pos += 1
            continue
        # phase == "quote"
        if ch == quote_ch:
            phase = "word"
        if ch == escape and quote_ch != "'":
            if pos + 1 == n:
                phase = "word"
                pos += 1
                continue
            buf.append(ch)
            pos += 1
            ch = rest[pos]
        buf.append(ch)
        pos += 1
    return words


# --- per-keyword argument parsers ------------------------------------------------------------------------

_Parsed = tuple[list[str], bool, "Node | None"]


def _parse_ignore(rest: str, escape: str) -> _Parsed:
    return [], False, None


def _parse_name_val(rest: str, key: str, escape: str) -> list[str]:
    # "KEY name value" (legacy: the first word has no "=") or "KEY a=b c=d ...".
    words = _parse_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _ParseFailure(f"{key} must have two arguments")
        return [parts[0], parts[1], ""]
    out: list[str] = []
    for word in words:
        if "=" not in word:
            raise _ParseFailure(
                f"Syntax error - can't find = in {quote(word)}. Must be of the form: name=value"
            )
        k, v = word.split("=", 1)
        out += [k, v, "="]
    return out


def _parse_env(rest: str, escape: str) -> _Parsed:
    return _parse_name_val(rest, "ENV", escape), False, None


def _parse_label(rest: str, escape: str) -> _Parsed:
    return _parse_name_val(rest, "LABEL", escape), False, None


def _parse_name_or_name_val(rest: str, escape: str) -> _Parsed:
    return _parse_words(rest, escape), False, None


def _parse_strings_whitespace_delimited(rest: str, escape: str) -> _Parsed:
    if not rest:
        return [], False, None
    return _WHITESPACE.split(rest), False, None


def _parse_string(rest: str, escape: str) -> _Parsed:
    return ([rest] if rest else []), False, None


def _finite_number(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")  # Go's decoder fails here; Python would give inf
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"invalid JSON constant {name}")  # Python accepts NaN/Infinity, Go does not


def _parse_json(rest: str) -> list[str]:
    rest = trim_left_space(rest)
    if not rest.startswith("["):
        raise _NotJSONArray
    try:
        value = json.loads(
            rest, parse_float=_finite_number, parse_int=_finite_number, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):
        raise _NotJSONArray from None
    if not isinstance(value, list):
        raise _NotJSONArray
    if not all(isinstance(v, str) for v in value):
        raise _NotStringArray
    return value


_NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"


def _parse_maybe_json(rest: str, escape: str) -> _Parsed:
    """Exec form when ``rest`` is a JSON array of strings, otherwise the whole text as one argument.

    Anything that is not valid JSON (``['a']``, a missing comma ...) silently becomes shell form; only
    a valid array holding a non-string is an error.
    """
    if not rest:
        return [], False, None
    try:
        return _parse_json(rest), True, None
    except _NotStringArray:
        raise _ParseFailure(_NOT_STRING_ARRAY) from None
    except _NotJSONArray:
        return [rest], False, None


def _parse_maybe_json_to_list(rest: str, escape: str) -> _Parsed:
    try:
        return _parse_json(rest), True, None
    except _NotStringArray:
        raise _ParseFailure(_NOT_STRING_ARRAY) from None
    except _NotJSONArray:
        return _parse_strings_whitespace_delimited(rest, escape)


def _parse_health_config(rest: str, escape: str) -> _Parsed:
    # HEALTHCHECK TYPE [cmd]: the type word, then the command as for CMD.
    sep = 0
    while sep < len(rest) and not is_space(rest[sep]):
        sep += 1
    nxt = sep
    while nxt < len(rest) and is_space(rest[nxt]):
        nxt += 1
    if sep == 0:
        return [], False, None
    args, is_json, _ = _parse_maybe_json(rest[nxt:], escape)
    return [rest[:sep], *args], is_json, None


def _parse_sub_command(rest: str, escape: str) -> _Parsed:
    if not rest:
        return [], False, None
    return [], False, _node_from_line(rest, escape, [])


_DISPATCH: dict[str, Callable[[str, str], _Parsed]] = {
    "add": _parse_maybe_json_to_list,
    "arg": _parse_name_or_name_val,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_to_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_env,
    "expose": _parse_strings_whitespace_delimited,
    "from": _parse_strings_whitespace_delimited,
    "healthcheck": _parse_health_config,
    "label": _parse_label,
    "maintainer": _parse_string,
    "onbuild": _parse_sub_command,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_to_list,
    "workdir": _parse_string,
}

INSTRUCTIONS: tuple[str, ...] = tuple(_DISPATCH)


def _node_from_line(line: str, escape: str, comments: list[str]) -> Node:
    cmd, flags, rest = _split_command(line, escape)
    fn = _DISPATCH.get(cmd.lower(), _parse_ignore)
    args, is_json, sub = fn(rest, escape)
    return Node(
        keyword=cmd.lower(),
        value=cmd,
        original=line,
        args=args,
        flags=flags,
        json=is_json,
        sub=sub,
        comments=list(comments),
    )


def _can_contain_heredoc(node: Node) -> bool:
    if node.keyword in _HEREDOC_COMPOUND_KEYWORDS and node.sub is not None:
        node = node.sub
    return node.keyword in _HEREDOC_KEYWORDS and not node.json


# --- heredocs ----------------------------------------------------------------------------------------


def parse_heredoc(word: str) -> Heredoc | None:
    """The heredoc a word such as ``<<EOF``, ``<<-"EOF"`` or ``3<<EOF`` opens, or None.

    The name is the word with quotes removed; if removing quotes changed it, the body is not expanded.
    Raises ``DockerfileParseError`` (line 0) for an unbalanced quote in the name.
    """
    m = _HEREDOC.match(word)
    if not m or not m.group(3):
        return None
    rest = m.group(3)
    try:
        words = Lex("\\", skip_unset_env=True).process_words(rest, {})
        if len(words) != 1:
            return None
        raw_words = Lex("\\", raw_quotes=True, skip_unset_env=True).process_words(rest, {})
    except ShellExpansionError as err:
        raise DockerfileParseError(str(err), 0) from None
    if len(raw_words) != len(words):
        msg = f"internal lexing of heredoc produced inconsistent results: {rest}"
        raise DockerfileParseError(msg, 0)
    name, raw = words[0], raw_words[0]
    expand = name.count("'") + name.count('"') == raw.count("'") + raw.count('"')
    fd = int(m.group(1)) if m.group(1) else 0
    return Heredoc(name=name, expand=expand, chomp=m.group(2) == "-", fd=fd)


def heredocs_from_line(line: str) -> list[Heredoc]:
    """Every heredoc opened on an instruction line, in order. A line the lexer rejects has none."""
    lex = Lex("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    try:
        words = lex.process_words(line, {})
    except ShellExpansionError:
        return []
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


def chomp_heredoc_content(content: str) -> str:
    """Strip leading tabs from every line, what ``<<-`` asks for."""
    return _LEADING_TABS.sub("", content)


# --- the parser --------------------------------------------------------------------------------------


class _Lines:
    def __init__(self, lines: list[str]):
        self.lines = lines
        self.pos = 0

    def next(self) -> str | None:
        if self.pos >= len(self.lines):
            return None
        line = self.lines[self.pos]
        self.pos += 1
        return line


def parse(data: bytes | str) -> ParseResult:
    """Parse a whole Dockerfile. Raises ``DockerfileParseError`` for what BuildKit's parser rejects."""
    lines, too_long = _split_lines(data)
    scanner = _Lines(lines)
    directives = _DirectiveParser()
    escape = DEFAULT_ESCAPE_TOKEN
    continuation = _continuation_regex(escape)
    found_directives: list[Directive] = []
    nodes: list[Node] = []
    warnings: list[ParseWarning] = []
    comments: list[str] = []
    current = 0

    def process_line(raw: str, strip_left: bool) -> tuple[str, Directive | None]:
        nonlocal escape, continuation
        token = _trim_newline(raw)
        if strip_left:
            token = trim_left_space(token)
        try:
            directive = directives.parse_line(token)
            if directive is not None and directive.name == "escape":
                if directive.value not in ("`", "\\"):
                    raise _ParseFailure(f"invalid escape token '{directive.value}' does not match ` or \\")
                escape = directive.value
                continuation = _continuation_regex(escape)
        except _ParseFailure as err:
            raise DockerfileParseError(str(err), current + 1, text=token) from None
        if directive is not None:
            found_directives.append(directive)
        return ("" if _is_comment(token) else token), directive

    def trim_continuation(line: str) -> tuple[str, bool]:
        if continuation.search(line):
            return continuation.sub(r"\1", line), False
        return line, True

    while (raw := scanner.next()) is not None:
        if _is_comment(raw):
            comment = trim_space(raw[1:])
            if comment:
                comments.append(comment)
            else:
                comments = []
        line, directive = process_line(raw, True)
        if directive is not None:
            comments = comments[:-1]
        current += 1
        start = current

        line, end_of_line = trim_continuation(line)
        if end_of_line and not line:
            continue
        parts = [line]
        has_empty_continuation = False
        while not end_of_line and (raw := scanner.next()) is not None:
            line, _ = process_line(raw, False)
            current += 1
            if _is_comment(raw):
                continue  # comment lines inside a continuation are dropped
            if not trim_left_space(_trim_newline(line)):
                has_empty_continuation = True  # so are empty ones, with a warning
                continue
            line, end_of_line = trim_continuation(line)
            parts.append(line)
        logical = "".join(parts)

        if has_empty_continuation:
            warnings.append(
                ParseWarning(
                    short="Empty continuation line found in: " + logical,
                    detail="Empty continuation lines will become errors in a future release",
                    url=EMPTY_CONTINUATION_URL,
                    line=current,
                )
            )

        try:
            node = _node_from_line(logical, escape, comments)
        except _ParseFailure as err:
            raise DockerfileParseError(str(err), start, end_line=current, text=logical) from None

        if _can_contain_heredoc(node) and "<<" in logical:
            try:
                docs = heredocs_from_line(logical)
            except DockerfileParseError as err:
                raise DockerfileParseError(str(err), start, end_line=current, text=logical) from None
            for doc in docs:
                body: list[str] = []
                terminated = False
                while (raw := scanner.next()) is not None:
                    current += 1
                    candidate = _trim_newline(raw)
                    if doc.chomp:
                        candidate = candidate.lstrip("\t")
                    if candidate == doc.name:
                        terminated = True
                        break
                    body.append(raw)
                if not terminated:
                    raise DockerfileParseError("unterminated heredoc", start, end_line=current, text=logical)
                doc.content = "".join(body)
                node.heredocs.append(doc)

        node.start_line, node.end_line = start, current
        if node.sub is not None:
            node.sub.start_line, node.sub.end_line = start, current
        nodes.append(node)
        comments = []

    if not nodes:
        raise DockerfileParseError("file with no instructions", current)
    if too_long:
        raise DockerfileParseError(
            f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES - 1}", current
        )
    return ParseResult(nodes=nodes, escape_token=escape, warnings=warnings, directives=found_directives)
