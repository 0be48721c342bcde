"""chmod-style mode strings for ``COPY --chmod=u+x`` (``FileActionCopy.modeStr``).

Accepts an octal number or comma-separated symbolic clauses ``[ugoa]*([-+=]([rwxXst]*|[ugo]))+``,
applied with a zero umask like BuildKit (so ``+x`` means ``a+x``).
"""

from __future__ import annotations

import re
import stat

from buildkitpy.errors import InvalidArgument

_CLAUSE = re.compile(r"^([ugoa]*)((?:[-+=](?:[rwxXst]*|[ugo]))+)$")
_ACTION = re.compile(r"([-+=])([rwxXst]*|[ugo])")
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007}  # permission bits + the special bit each class owns


class ModeSet:
    def __init__(self, text: str) -> None:
        self.text = text
        self.octal: int | None = None
        self.clauses: list[tuple[str, list[tuple[str, str]]]] = []
        if re.fullmatch(r"[0-7]+", text):
            value = int(text, 8)
            if value > 0o7777:
                raise InvalidArgument(f"invalid mode {text!r}: out of range")
            self.octal = value
            return
        for clause in text.split(","):
            m = _CLAUSE.match(clause)
            if not m:
                raise InvalidArgument(f"invalid mode string {text!r}: cannot parse {clause!r}")
            who = m.group(1) or "a"
            if "a" in who:
                who = "ugo"
            self.clauses.append((who, _ACTION.findall(m.group(2))))

    def apply(self, mode: int, is_dir: bool) -> int:
        """New permission bits (incl. setuid/setgid/sticky) for a file whose mode is ``mode``."""
        perm = stat.S_IMODE(mode)
        if self.octal is not None:
            return self.octal
        for who, actions in self.clauses:
            mask = 0
            for w in who:
                mask |= _WHO[w]
            for op, perms in actions:
                bits = 0
                if perms in ("u", "g", "o"):  # copy another class's rwx bits
                    shift = {"u": 6, "g": 3, "o": 0}[perms]
                    rwx = (perm >> shift) & 0o7
                    bits = rwx << 6 | rwx << 3 | rwx
                else:
                    for p in perms:
                        if p == "r":
                            bits |= 0o444
                        elif p == "w":
                            bits |= 0o222
                        elif p == "x":
                            bits |= 0o111
                        elif p == "X":
                            if is_dir or perm & 0o111:
                                bits |= 0o111
                        elif p == "s":
                            bits |= 0o6000
                        elif p == "t":
                            bits |= 0o1000
                bits &= mask
                if op == "+":
                    perm |= bits
                elif op == "-":
                    perm &= ~bits
                else:
                    perm = (perm & ~(mask & 0o777)) | bits
        return perm
