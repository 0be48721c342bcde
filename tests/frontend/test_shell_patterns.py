"""``${x#p}``, ``${x%p}`` and ``${x/p/r}``: the linear pattern matcher gives the matches of the
regexp BuildKit builds from a pattern (``.`` for ``?``, ``.*``/``.*?`` for ``*``), checked here
against Python's regex engine on many small random cases, and stays linear on long values where
a backtracking engine does not finish."""

from __future__ import annotations

import random
import re
import time

import pytest

from buildkitpy.frontend.dockerfile.shell import ShellExpansionError, process_word


def reference_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """The pattern as a regex, as BuildKit converts it (escapes taken as literals)."""
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(".*" if greedy else ".*?")
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(tok))
    return re.compile("".join(out))


def reference(op: str, pattern: str, value: str, template: str = "") -> str:
    if op in ("#", "##"):
        m = reference_regex(pattern, greedy=op == "##", anchored=True).search(value)
        return value[m.end():] if m else value
    if op in ("%", "%%"):
        units = re.findall(r"\\.|.", pattern, re.S)
        rev = "".join(reversed(units))
        m = reference_regex(rev, greedy=op == "%%", anchored=True).search(value[::-1])
        return value[: len(value) - m.end()] if m else value
    regex = reference_regex(pattern, greedy=True, anchored=False)
    if op == "/":
        m = regex.search(value)
        return value[: m.start()] + template + value[m.end():] if m else value
    out, last_end, pos = [], 0, 0  # Go's ReplaceAllString loop: no empty match right after a match
    while pos <= len(value):
        m = regex.search(value, pos)
        if not m:
            break
        out.append(value[last_end:m.start()])
        if m.end() > last_end or m.start() == 0:
            out.append(template)
        last_end = m.end()
        pos = pos + 1 if pos + 1 > m.end() else m.end()
    out.append(value[last_end:])
    return "".join(out)


def expand(op: str, pattern: str, value: str, template: str = "") -> str:
    word = "${V" + op + pattern + ("/" + template if op in ("/", "//") else "") + "}"
    return process_word(word, {"V": value})


def random_pattern(rng: random.Random) -> str:
    units = ["a", "b", "\n", "*", "?", "\\*", "\\?", "\\\\", "**"]
    return "".join(rng.choice(units) for _ in range(rng.randint(0, 5)))


@pytest.mark.parametrize("op", ["#", "##", "%", "%%", "/", "//"])
def test_matches_are_the_regexp_matches(op: str) -> None:
    rng = random.Random(op)
    for _ in range(3000):
        pattern = random_pattern(rng)
        value = "".join(rng.choice("ab*?\\\n") for _ in range(rng.randint(0, 9)))
        template = rng.choice(["", "x", "<>"])  # ($0 in a Dockerfile is expanded as a variable first)
        if op == "/" and not pattern:
            continue  # "${V//x}" is the replace-all form
        want = reference(op, pattern, value, template)
        assert expand(op, pattern, value, template) == want, (op, pattern, value, template)


@pytest.mark.parametrize("word", ["${V#*a*b*c}", "${V##*a*b*c}", "${V%a*b*c*}", "${V%%a*?b*}",
                                  "${V//*a*b/x}", "${V/a*b*c/x}", "${V//?*b/x}"])
def test_long_values_stay_linear(word: str) -> None:
    """Backtracking takes hours here (``//*a*b`` was 10 s at 4,000 characters, cubic); the
    matcher's work grows with the value's length. The bound only tells a hang from a result."""
    value = "a" * 200_000
    started = time.monotonic()
    result = process_word(word, {"V": value})
    assert time.monotonic() - started < 60
    assert result == value  # no 'b' or 'c': nothing matches


def test_invalid_escapes_are_refused_as_before() -> None:
    with pytest.raises(ShellExpansionError, match=r"invalid escape '\\a'"):
        process_word("${V#\\a}", {"V": "x"})
    with pytest.raises(ShellExpansionError, match=r"invalid escape '\\a'"):
        process_word("${V//\\a/b}", {"V": "x"})
