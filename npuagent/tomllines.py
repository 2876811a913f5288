"""Where each key of a TOML document is written: key path -> line number.

``tomllib`` parses TOML but forgets where things were, and an operator told
"collectors.host.interval is wrong" still has to hunt for it. This scanner reads
the same text once more and records the line of every table header and every
key, including keys of inline tables and items of arrays, with array-of-tables
elements numbered as ``tomllib`` numbers them (``("rules", 2, "metric")``).

It only locates; ``tomllib`` alone decides what is valid. On text it does not
understand it records less, and :func:`line_of` falls back to the nearest
enclosing key that it did record.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

Path = Tuple[Any, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: Dict[Path, int] = {}
        self.aot_index: Dict[Path, int] = {}  # resolved array-of-tables path -> index of its last element

    # -- low level -----------------------------------------------------------

    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def skip_space(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.advance((len(self.s) if end < 0 else end) - self.i)
            else:
                return

    def string(self) -> str:
        """Read a string starting at the cursor; return its (roughly unescaped) content."""
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                end = self.s.find(quote, self.i + 3)
                while quote == '"""' and end > 0 and self.s[end - 1] == "\\" and self.s[end - 2] != "\\":
                    end = self.s.find(quote, end + 1)
                end = len(self.s) if end < 0 else end
                # a closing delimiter may be followed by one or two more quotes of content
                while self.s[end + 3:end + 4] == quote[0]:
                    end += 1
                content = self.s[self.i + 3:end]
                self.advance(end + 3 - self.i)
                return content
        quote = self.s[self.i]
        j = self.i + 1
        while j < len(self.s) and self.s[j] not in (quote, "\n"):
            j += 2 if (quote == '"' and self.s[j] == "\\") else 1
        content = self.s[self.i + 1:j]
        self.advance(min(j + 1, len(self.s)) - self.i)
        return content.replace('\\"', '"').replace("\\\\", "\\") if quote == '"' else content

    def key(self) -> List[str]:
        """A dotted key: ``a."b.c".d`` -> ["a", "b.c", "d"]."""
        parts = []
        while True:
            self.skip_space(False)
            c = self.peek()
            if c in ('"', "'"):
                parts.append(self.string())
            else:
                m = _BARE.match(self.s, self.i)
                if not m:
                    return parts
                parts.append(m.group())
                self.advance(m.end() - self.i)
            self.skip_space(False)
            if self.peek() != ".":
                return parts
            self.advance()

    # -- values --------------------------------------------------------------

    def value(self, path: Path) -> None:
        self.skip_space(False)
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "{":
            self.advance()
            while True:
                self.skip_space(True)
                if self.peek() in ("}", ""):
                    self.advance()
                    return
                if self.peek() == ",":
                    self.advance()
                    continue
                start = self.line
                keys = self.key()
                if not keys:
                    return
                self.lines.setdefault(path + tuple(keys), start)
                self.skip_space(False)
                if self.peek() == "=":
                    self.advance()
                self.value(path + tuple(keys))
        elif c == "[":
            self.advance()
            index = 0
            while True:
                self.skip_space(True)
                if self.peek() in ("]", ""):
                    self.advance()
                    return
                if self.peek() == ",":
                    self.advance()
                    index += 1
                    continue
                self.lines.setdefault(path + (index,), self.line)
                before = self.i
                self.value(path + (index,))
                if self.i == before:
                    self.advance()
        else:
            m = re.compile(r"[^,\]}\n#]*").match(self.s, self.i)
            self.advance(m.end() - self.i if m else 1)

    # -- statements ----------------------------------------------------------

    def header(self, array: bool) -> Path:
        self.advance(2 if array else 1)
        keys = self.key()
        self.skip_space(False)
        self.advance(2 if array else 1)
        resolved: Path = ()
        for n, k in enumerate(keys):
            resolved += (k,)
            if array and n == len(keys) - 1:
                # numbered under its own parent element: [[tests.series]] restarts at 0 in each [[tests]]
                self.aot_index[resolved] = self.aot_index.get(resolved, -1) + 1
                self.lines.setdefault(resolved, self.line)
                resolved += (self.aot_index[resolved],)
            elif resolved in self.aot_index:
                resolved += (self.aot_index[resolved],)
        return resolved

    def scan(self) -> Dict[Path, int]:
        table: Path = ()
        while self.i < len(self.s):
            self.skip_space(True)
            if self.i >= len(self.s):
                break
            start = self.line
            if self.peek(2) == "[[":
                table = self.header(True)
                self.lines[table] = start
            elif self.peek() == "[":
                table = self.header(False)
                self.lines.setdefault(table, start)
            else:
                keys = self.key()
                if not keys:  # not TOML we understand: skip the line
                    end = self.s.find("\n", self.i)
                    self.advance((len(self.s) if end < 0 else end) - self.i + (end >= 0))
                    continue
                path = table + tuple(keys)
                self.lines.setdefault(path, start)
                self.skip_space(False)
                if self.peek() == "=":
                    self.advance()
                    self.value(path)
        return self.lines


def key_lines(text: str) -> Dict[Path, int]:
    """Map every key path of a TOML text to the line (1-based) where it is written."""
    try:
        return _Scanner(text).scan()
    except (IndexError, ValueError):
        return {}


def line_of(lines: Dict[Path, int], path: Path) -> int:
    """The line of ``path``, or of its nearest recorded ancestor (1 if none)."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return 1
