"""BuildKit's shell-word lexer: quote removal, escapes and ``$VAR`` expansion.

This is not a POSIX shell: there is no command substitution, no globbing and no arithmetic. It removes
quotes, honours the escape token (``\\`` or `````), and expands ``$name``, ``${name}`` and the modifier
forms ``${name:-w}``, ``${name-w}``, ``${name:+w}``, ``${name+w}``, ``${name:?w}``, ``${name?w}``,
``${name#p}``, ``${name##p}``, ``${name%p}``, ``${name%%p}``, ``${name/p/r}`` and ``${name//p/r}``.
An unset variable expands to the empty string (or is kept verbatim with ``skip_unset_env``).

The frontend expands only some instruction fields with this (see ``expand.py``); RUN, CMD and
ENTRYPOINT are left for the real shell in the container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from buildkitpy.gocompat import SPACE_RUN, fields, is_digit, is_letter, is_space, quote

from .errors import DockerfileError

_EOF = ""
# text/scanner reports end of input as rune -1; printing it with %s gives U+FFFD, which is what a user
# sees in e.g. "unsupported modifier (\ufffd) in substitution" for "${x".
_EOF_TEXT = "\ufffd"


class ShellExpansionError(DockerfileError):
    """A word could not be expanded; ``str()`` is BuildKit's message (``failed to process "...": ...``)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


# ``${A:-${B:-…}}`` nesting is recursive here; bounded well below Python's recursion limit (BuildKit's
# Go stack takes more; real Dockerfiles nest a few levels)
MAX_SUBSTITUTION_DEPTH = 100

# The longest a word may grow by expansion. ``ARG A1=$A0$A0`` doubles a value per line: forty such
# lines, 700 bytes of Dockerfile, asked for terabytes (BuildKit grows until it is killed, and so did
# we, in a conversion thread that not even the daemon's shutdown could stop); ``${A//x/$B}``
# multiplies likewise. A word as written is at most a line (64 KiB).
MAX_EXPANDED_BYTES = 1 << 20
_TOO_LONG = f"the expansion is longer than {MAX_EXPANDED_BYTES >> 20} MiB"

# What the expansions of one conversion may add to the text, all together (``ExpansionBudget``).
# With one word held to a MiB, ``ENV Bn=x$A16`` on each line after the sixteen that make A16 still
# added a MiB a line: 200 such lines, 3 KB of Dockerfile, took 2.7 GB and 40 s to convert, and
# 2,000 lines would end the daemon.
MAX_TOTAL_GROWTH = 16 << 20


class ExpansionBudget:
    """How much the expansions of one conversion have added to the words they expanded (what a
    word becomes beyond its own length), held to ``limit`` bytes."""

    def __init__(self, limit: int = MAX_TOTAL_GROWTH) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, growth: int) -> None:
        if growth > 0:
            self.used += growth
            if self.used > self.limit:
                limit = f"{self.limit >> 20} MiB" if self.limit % (1 << 20) == 0 else f"{self.limit} bytes"
                raise _Fail(f"the expansions of this Dockerfile add more than {limit} in all")


class _Fail(Exception):
    """Internal: the innermost reason, wrapped into ShellExpansionError at the top."""


@dataclass
class WordResult:
    """Outcome of one expansion: the joined word, its fields, and the variable names looked up."""

    result: str
    words: list[str]
    matched: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)


class _Words:
    """Field splitting as BuildKit does it: unquoted white space from expansions separates fields."""

    def __init__(self, buf: list[str]):
        # ``buf`` is shared between nested expansions on purpose; see Lex._process_stop_on.
        self.buf = buf
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if is_space(ch) and self.in_word:
            if self.buf:
                self.words.append("".join(self.buf))
                self.buf.clear()
                self.in_word = False
        elif not is_space(ch):
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.buf.append(ch)
        self.in_word = True

    def add_string(self, s: str) -> None:
        """``add_char`` of each character, a run at a time: a run of white space acts as its first
        character (the ones after it change nothing), a run of others goes into the field whole
        (a 1 MiB value took 0.2 s a character at a time)."""
        pos = 0
        for run in SPACE_RUN.finditer(s):
            start = run.start()
            if start > pos:
                self.buf.append(s[pos:start])
                self.in_word = True
            if self.in_word and self.buf:
                self.words.append("".join(self.buf))
                self.buf.clear()
                self.in_word = False
            pos = run.end()
        if pos < len(s):
            self.buf.append(s[pos:])
            self.in_word = True

    def add_raw_string(self, s: str) -> None:
        if s:  # Go's strings.Builder: writing "" leaves the length at 0
            self.buf.append(s)
        self.in_word = True

    def get_words(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf.clear()
            self.in_word = False
        return self.words


class Lex:
    """A configurable lexer; the module-level functions cover the usual settings.

    ``raw_quotes`` keeps quote characters in the output, ``raw_escapes`` keeps escape tokens,
    ``skip_process_quotes`` treats quotes as plain characters (used for heredoc bodies) and
    ``skip_unset_env`` leaves references to unset variables as written; ``budget`` (one per
    conversion) bounds what all its expansions add together. Not thread-safe.
    """

    def __init__(
        self,
        escape_token: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_process_quotes: bool = False,
        skip_unset_env: bool = False,
        budget: ExpansionBudget | None = None,
    ):
        self.escape_token = escape_token
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset_env = skip_unset_env
        self.budget = budget  # shared by the lexers of one conversion

    # -- public API ------------------------------------------------------------------------------

    def process(self, word: str, env: Mapping[str, str]) -> WordResult:
        """Expand ``word``; both the joined result and the split fields are returned."""
        if ("$" not in word and "<" not in word and "'" not in word and '"' not in word
                and self.escape_token not in word):
            # Nothing to expand (most words of a Dockerfile): the word itself, split at white space.
            return WordResult(word, fields(word))
        self._src = word
        self._pos = 0
        self._env = env
        self._raw_esc = self.raw_escapes
        self._words_buf: list[str] = []
        self._matched: set[str] = set()
        self._unmatched: set[str] = set()
        self._depth = 0
        try:
            result, words = self._process_stop_on(_EOF, self._raw_esc)
            if self.budget is not None:
                self.budget.spend(len(result) - len(word))
        except _Fail as err:
            reason = str(err)
            raise ShellExpansionError(f"failed to process {quote(word)}: {reason}", reason) from None
        return WordResult(result, words, self._matched, self._unmatched)

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        return self.process(word, env).result

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        return self.process(word, env).words

    # -- scanner ---------------------------------------------------------------------------------

    def _peek(self) -> str:
        return self._src[self._pos] if self._pos < len(self._src) else _EOF

    def _next(self) -> str:
        if self._pos >= len(self._src):
            return _EOF
        ch = self._src[self._pos]
        self._pos += 1
        return ch

    # -- lexing ----------------------------------------------------------------------------------

    def _process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process until ``stop`` (consumed) or the end of input when ``stop`` is empty.

        BuildKit keeps one field buffer per lexer and every nested ``${...}`` resets it, so in
        ``process_words`` the text of a field before a modifier expansion is dropped:
        ``abc${x:-def}`` splits into ``["def"]``. We keep that quirk for identical results.
        """
        result: list[str] = []
        expanded = 0  # the length of what handlers added to ``result``
        self._words_buf.clear()
        words = _Words(self._words_buf)
        saved_raw = self._raw_esc
        self._raw_esc = raw_escapes
        try:
            while self._peek() != _EOF:
                ch = self._peek()
                if stop and ch == stop:
                    self._next()
                    return "".join(result), words.get_words()
                handler = None
                if ch == "$":
                    handler = self._process_dollar
                elif ch == "<":
                    handler = self._process_possible_heredoc
                elif not self.skip_process_quotes and ch == "'":
                    handler = self._process_single_quote
                elif not self.skip_process_quotes and ch == '"':
                    handler = self._process_double_quote
                if handler is not None:
                    tmp = handler()
                    expanded += len(tmp)
                    if expanded > MAX_EXPANDED_BYTES:
                        raise _Fail(_TOO_LONG)
                    result.append(tmp)
                    if ch == "$":
                        words.add_string(tmp)
                    else:
                        words.add_raw_string(tmp)
                    continue
                ch = self._next()
                if ch == self.escape_token:
                    if self._raw_esc:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self._next()
                    if ch == _EOF:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        finally:
            self._raw_esc = saved_raw
        if stop:
            raise _Fail(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.get_words()

    def _process_single_quote(self) -> str:
        # Everything up to the next ' is literal; a single quote cannot be escaped inside.
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            ch = self._next()
            if ch == _EOF:
                raise _Fail("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _process_double_quote(self) -> str:
        # Literal except $ expansions; the escape token only escapes ", $ and itself.
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            peek = self._peek()
            if peek == _EOF:
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            if peek == '"':
                ch = self._next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if peek == "$":
                out.append(self._process_dollar())
                continue
            ch = self._next()
            if ch == self.escape_token:
                if self._raw_esc:
                    out.append(ch)
                nxt = self._peek()
                if nxt == _EOF:
                    continue
                if nxt in ('"', "$", self.escape_token):
                    ch = self._next()
            out.append(ch)

    def _process_dollar(self) -> str:
        self._depth += 1
        try:
            if self._depth > MAX_SUBSTITUTION_DEPTH:
                raise _Fail(f"variable substitutions nested more than {MAX_SUBSTITUTION_DEPTH} levels deep")
            return self._process_dollar_body()
        finally:
            self._depth -= 1

    def _process_dollar_body(self) -> str:
        self._next()
        if self._peek() != "{":
            name = self._process_name()
            if not name:
                return "$"
            value, found = self._get_env(name)
            if not found and self.skip_unset_env:
                return "$" + name
            return value

        self._next()
        peek = self._peek()
        if peek == _EOF:
            raise _Fail("syntax error: missing '}'")
        if peek in ("{", "}", ":"):
            raise _Fail("syntax error: bad substitution")
        name = self._process_name()
        ch = self._next()
        chs = ch or _EOF_TEXT
        null_is_unset = False

        if ch == "}":
            value, found = self._get_env(name)
            if not found and self.skip_unset_env:
                return "${" + name + "}"
            return value

        if ch == ":":
            null_is_unset = True
            ch = self._next()
            chs += ch or _EOF_TEXT
        elif ch == "/":
            return self._process_replace(name)
        elif ch == _EOF or ch not in "+-?#%":
            raise _Fail(f"unsupported modifier ({chs}) in substitution")

        pattern_mode = ch != _EOF and ch in "#%"
        if null_is_unset and pattern_mode:
            raise _Fail(f"unsupported modifier ({chs}) in substitution")
        try:
            word, _ = self._process_stop_on("}", pattern_mode)
        except _Fail:
            if self._peek() == _EOF:
                raise _Fail("syntax error: missing '}'") from None
            raise

        value, found = self._get_env(name)
        if self.skip_unset_env and not found:
            return "${" + name + chs + word + "}"

        if ch == "-":
            if not found or (null_is_unset and value == ""):
                return word
            return value
        if ch == "+":
            if not found or (null_is_unset and value == ""):
                return ""
            return word
        if ch == "?":
            if not found:
                raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _Fail(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if pattern_mode:
            # ${x#p}/${x%p} remove the shortest match, ${x##p}/${x%%p} the longest.
            greedy = word[:1] == ch
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _Fail(f"unsupported modifier ({chs}) in substitution")

    def _process_replace(self, name: str) -> str:
        replace_all = self._peek() == "/"
        if replace_all:
            self._next()
        try:
            pattern, _ = self._process_stop_on("/", True)
        except _Fail:
            if self._peek() == _EOF:
                raise _Fail("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self._process_stop_on("}", True)
        except _Fail:
            if self._peek() == _EOF:
                raise _Fail("syntax error: missing '}'") from None
            raise

        value, found = self._get_env(name)
        if self.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        return _go_replace(_Glob(pattern), value, replacement, replace_all)

    def _process_name(self) -> str:
        # A name is [letters digits _]+; a leading digit means a positional parameter ($1, $12),
        # and a single special parameter character ($@, $#, ...) is a name of its own.
        name: list[str] = []
        while self._peek() != _EOF:
            ch = self._peek()
            if not name and is_digit(ch):
                while self._peek() != _EOF and is_digit(self._peek()):
                    name.append(self._next())
                return "".join(name)
            if not name and ch in "@*#?-$!0":
                return self._next()
            if not is_letter(ch) and not is_digit(ch) and ch != "_":
                break
            name.append(self._next())
        return "".join(name)

    def _process_possible_heredoc(self) -> str:
        # "<<" plus any following blanks stays glued to the next word, so "<< EOF" is one field.
        self._next()
        if self._peek() != "<":
            return "<"
        self._next()
        space: list[str] = []
        while self._peek() != _EOF and self._peek() in "\t\r ":
            space.append(self._next())
        return "<<" + "".join(space)

    def _get_env(self, name: str) -> tuple[str, bool]:
        if name in self._env:
            self._matched.add(name)
            return self._env[name], True
        self._unmatched.add(name)
        return "", False


# --- ${x#p} / ${x%p} / ${x/p/r} patterns ------------------------------------------------------------


class _Glob:
    """A shell pattern (``*``, ``?``, ``\\`` escapes; no bracket expressions) matched in linear time.

    BuildKit turns the pattern into a Go regexp (``.`` for ``?``, ``.*`` or ``.*?`` for ``*``), which
    RE2 runs in linear time. Python's backtracking engine took cubic time on a replacement like
    ``${A//*a*b/x}`` (10 s for 4,000 characters), holding the GIL: a conversion thread stuck there
    stalled every build of the daemon. The matches here are that regexp's: an anchored match with
    lazy stars ends at its shortest, with greedy ones at its longest; a search starts at the
    leftmost position where a match exists and, the stars being greedy, ends at its longest there
    (``.``, so ``?`` and ``*``, never matches a newline). The pattern runs as a bit-parallel NFA:
    bit ``j`` set means the first ``j`` tokens matched; a star's state stays on any character but
    a newline and may be skipped.
    """

    def __init__(self, pattern: str) -> None:
        self.literal: dict[str, int] = {}  # char -> the states whose next token is that char
        self.any = 0  # states whose next token is ?
        self.star = 0  # states whose next token is *
        n = 0
        i = 0
        while i < len(pattern):
            tok = pattern[i]
            i += 1
            if tok == "*":
                self.star |= 1 << n
            elif tok == "?":
                self.any |= 1 << n
            else:
                if tok == "\\":
                    nxt = pattern[i] if i < len(pattern) else _EOF
                    if nxt != _EOF and nxt in "}/":
                        # \} and \/ escape the ${} syntax, not the pattern.
                        continue
                    i += 1
                    if nxt == _EOF or nxt not in "*?\\":
                        shown = nxt or _EOF_TEXT
                        raise _Fail(f"invalid pattern ({pattern}) in substitution: "
                                    f"invalid escape '\\{shown}'")
                    tok = nxt
                self.literal[tok] = self.literal.get(tok, 0) | 1 << n
            n += 1
        self.accept = 1 << n
        self.start = self._close(1)

    def _close(self, states: int) -> int:
        while True:
            more = states | (states & self.star) << 1
            if more == states:
                return states
            states = more

    def _step(self, states: int, ch: str) -> int:
        moved = states & (self.literal.get(ch, 0) | (self.any if ch != "\n" else 0))
        stay = states & self.star if ch != "\n" else 0
        return self._close(moved << 1 | stay) if self.star else moved << 1

    def prefix_end(self, value: str, start: int, *, longest: bool) -> int | None:
        """Where a match of the pattern at ``start`` ends: its shortest or its longest; None if
        there is none."""
        states = self.start
        best = start if states & self.accept else None
        if best is not None and not longest:
            return best
        for i in range(start, len(value)):
            states = self._step(states, value[i])
            if not states:
                break
            if states & self.accept:
                best = i + 1
                if not longest:
                    break
        return best

    def _reversed(self) -> _Glob:
        """The pattern read backwards (token ``j`` of ``m`` becomes token ``m - 1 - j``)."""
        m = self.accept.bit_length() - 1

        def flip(bits: int) -> int:
            return int(format(bits, f"0{m}b")[::-1], 2) if m else 0

        rev = _Glob("")
        rev.literal = {ch: flip(bits) for ch, bits in self.literal.items()}
        rev.any, rev.star, rev.accept = flip(self.any), flip(self.star), self.accept
        rev.start = rev._close(1)
        return rev

    def starts(self, value: str) -> bytearray:
        """1 at each position where a match starts (one pass from the end with the reversed
        pattern, which may start matching anywhere)."""
        rev = self._reversed()
        found = bytearray(len(value) + 1)
        states = 0
        for i in range(len(value), -1, -1):
            states |= rev.start
            if states & rev.accept:
                found[i] = 1
            if i:
                states = rev._step(states, value[i - 1])
        return found


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    end = _Glob(pattern).prefix_end(value, 0, longest=greedy)
    return value if end is None else value[end:]


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern keeping each ``\\x`` escape pair in order (``a\\*c`` -> ``c\\*a``)."""
    units: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i != len(pattern) - 1:
            units.append(pattern[i : i + 2])
            i += 2
        else:
            units.append(pattern[i])
            i += 1
    return "".join(reversed(units))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # The shortest (longest) match at the end is the shortest (longest) prefix match of the reversed
    # pattern in the reversed value.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _expand_template(template: str, matched: str) -> str:
    """Go's ``Regexp.Expand``: ``$$`` is ``$``, ``$0``/``${0}`` the match, other names expand to ""."""
    out: list[str] = []
    i = 0
    while True:
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:])
            return "".join(out)
        out.append(template[i:j])
        rest = template[j + 1 :]
        if rest.startswith("$"):
            out.append("$")
            i = j + 2
            continue
        brace = rest.startswith("{")
        body = rest[1:] if brace else rest
        k = 0
        while k < len(body) and (is_letter(body[k]) or is_digit(body[k]) or body[k] == "_"):
            k += 1
        if k == 0 or (brace and (k >= len(body) or body[k] != "}")):
            out.append("$")
            i = j + 1
            continue
        name = body[:k]
        if name == "0":
            out.append(matched)
        i = j + 1 + k + (2 if brace else 0)


def _go_replace(glob: _Glob, value: str, template: str, replace_all: bool) -> str:
    """``ReplaceAllString``/first-match replacement with Go's rules.

    Go skips an empty match right after a previous match; Python's ``re.sub`` does not, so
    ``${x//*/y}`` would differ. The loop below is Go's.
    """
    starts = glob.starts(value)

    def search(pos: int) -> tuple[int, int] | None:
        start = starts.find(1, pos)
        if start < 0:
            return None
        end = glob.prefix_end(value, start, longest=True)
        assert end is not None  # a match starts there
        return start, end

    if not replace_all:
        m = search(0)
        if m is None:
            return value
        return value[: m[0]] + _expand_template(template, value[m[0] : m[1]]) + value[m[1] :]
    out: list[str] = []
    size = 0
    last_end = 0
    pos = 0
    while pos <= len(value):
        m = search(pos)
        if m is None:
            break
        start, end = m
        out.append(value[last_end:start])
        size += start - last_end
        if end > last_end or start == 0:
            out.append(_expand_template(template, value[start:end]))
            size += len(out[-1])
        if size > MAX_EXPANDED_BYTES:
            raise _Fail(_TOO_LONG)
        last_end = end
        pos = pos + 1 if pos + 1 > end else end
    out.append(value[last_end:])
    return "".join(out)


# --- convenience functions ----------------------------------------------------------------------------


def process_word(word: str, env: Mapping[str, str], escape_token: str = "\\") -> str:
    """Expand one word as ENV/LABEL/WORKDIR/... values are expanded: quotes removed, spaces kept."""
    return Lex(escape_token).process(word, env).result


def process_words(word: str, env: Mapping[str, str], escape_token: str = "\\") -> list[str]:
    """Expand and split into fields on unquoted white space (BuildKit uses this for EXPOSE)."""
    return Lex(escape_token).process(word, env).words


def process_word_with_matches(word: str, env: Mapping[str, str], escape_token: str = "\\") -> WordResult:
    """Like ``process_word`` but also report which variables were found and which were not.

    BuildKit feeds the unmatched names to its UndefinedVar / UndefinedArgInFrom lint rules.
    """
    return Lex(escape_token).process(word, env)
