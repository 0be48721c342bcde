"""containerd's filter syntax, as BuildKit's DiskUsage and Prune read it.

A filter string is a comma-separated list of selectors that must all match (``type==regular,
description~=^copy``); several strings match when any of them does; the empty string matches
everything (buildx sends ``[""]`` when the user gave no ``--filter``). A selector is
``fieldpath``, ``fieldpath==value``, ``fieldpath!=value`` or ``fieldpath~=regexp``; a bare field
tests presence (``inuse``, ``shared``, ``private``, ``mutable``). Values may be quoted with ``"``
(or, after ``~=``, with ``/`` or ``|``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from buildkitpy.errors import InvalidArgument

# fieldpath -> (value, present)
Adaptor = Callable[[list[str]], tuple[str, bool]]

_FIELD = re.compile(r"[A-Za-z0-9_]+")
_QUOTES = {'"', "/", "|"}
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


class FilterSyntaxError(InvalidArgument):
    pass


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: str  # "" (present), "==", "!=", "~="
    value: str = ""
    regexp: re.Pattern[str] | None = None

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(list(self.fieldpath))
        if self.operator == "":
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return value != self.value
        assert self.regexp is not None
        return self.regexp.search(value) is not None


@dataclass(frozen=True)
class Filter:
    """Any of ``alternatives`` matches when all of its selectors do; no alternatives: always."""

    alternatives: tuple[tuple[Selector, ...], ...] = ()

    def match(self, adaptor: Adaptor) -> bool:
        if not self.alternatives:
            return True
        return any(all(s.match(adaptor) for s in alt) for alt in self.alternatives)


def parse_all(filters: Sequence[str]) -> Filter:
    alternatives = []
    for text in filters:
        selectors = parse(text)
        if not selectors:
            return Filter()  # "" matches everything, so the union does too
        alternatives.append(selectors)
    return Filter(tuple(alternatives))


def parse(text: str) -> tuple[Selector, ...]:
    """The selectors of one filter string (empty for the empty string)."""
    if text == "":
        return ()
    return _Parser(text).selectors()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"invalid filter {self.text!r} at offset {self.pos}: {message}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def selectors(self) -> tuple[Selector, ...]:
        out = [self.selector()]
        while (c := self.peek()) == ",":
            self.pos += 1
            out.append(self.selector())
        if c:
            raise self.fail(f"unexpected input {c!r}")
        return tuple(out)

    def selector(self) -> Selector:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        c = self.peek()
        if c in ("", ","):
            return Selector(tuple(path), "")
        op = self.operator()
        value = self.value(alt_quotes=op == "~=")
        if op == "~=":
            try:
                return Selector(tuple(path), op, value, re.compile(value))
            except re.error as exc:
                raise self.fail(f"invalid regular expression {value!r}: {exc}") from None
        return Selector(tuple(path), op, value)

    def field(self) -> str:
        c = self.peek()
        if c == '"':
            return self.quoted(c)
        m = _FIELD.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a field name")
        self.pos = m.end()
        return m.group()

    def operator(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "=!~":
            self.pos += 1
        op = self.text[start:self.pos]
        if op not in ("==", "!=", "~="):
            self.pos = start
            got = op or self.text[start:start + 1]
            raise self.fail(f'expected an operator ("==", "!=" or "~="), got {got!r}')
        return op

    def value(self, *, alt_quotes: bool) -> str:
        c = self.peek()
        if c == "":
            raise self.fail("expected a value")
        if c in _QUOTES:
            if c != '"' and not alt_quotes:
                raise self.fail(f"quote {c!r} is only allowed after ~=")
            return self.quoted(c)
        if c in ",.":
            raise self.fail("expected a value")
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] != "," and not self.text[self.pos].isspace():
            self.pos += 1
        return self.text[start:self.pos]

    def quoted(self, quote: str) -> str:
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.fail("quoted literal not terminated")
            c = self.text[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\":
                if self.pos >= len(self.text):
                    raise self.fail("quoted literal not terminated")
                e = self.text[self.pos]
                self.pos += 1
                if e == quote:
                    out.append(e)
                elif quote != '"':
                    out.append("\\" + e)  # a regular expression's own escape (/\d+/)
                elif e in _ESCAPES:
                    out.append(_ESCAPES[e])
                else:
                    raise self.fail(f"illegal escape sequence \\{e}")
                continue
            out.append(c)
