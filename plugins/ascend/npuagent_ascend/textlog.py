"""Free text (a service's stdout and stderr in the journal) grouped into the blocks it prints.

An inference service does not write plog lines to its stderr: it writes Python and
torch_npu exceptions, and CANN's "Ascend Error Message" (``aclGetRecentErrMsg``), which
spans many lines::

    RuntimeError: ... NPU function error: ..., error code is 507035
    [ERROR] 2025-04-29-18:46:11 (PID:1066924, Device:1, RankID:-1) ERR00100 PTA call acl api failed
    [Error]: The vector core execution is abnormal.
    EZ9999: Inner Error!
            TraceBack (most recent call last):
            ...

The journal stores that one line per entry. :class:`TextAssembler` puts the lines of one
writer back together: a block starts at any line that does not continue the one before,
and goes on over indented lines and the shapes that only occur inside such a message (the
torch_npu ``[ERROR] <time> (PID:..)`` and ``[Error]:`` lines, a CANN code header in any of
its versions, MindSpore's ``- Ascend Error Message:`` frame, a ``TraceBack`` line, the
device scheduler's ``<exception_print>`` lines); the torch_npu and CANN parts only after a
line that says something failed, so a CANN code after an INFO line starts a block of its
own. A blank line ends a block unless the next line continues it. Launcher prefixes
(``[rank1]: ``, ``(Worker_TP0 pid=17096) ``, vLLM's ``ERROR 03-25 06:14:02 [file.py:880] ``)
are taken off first, and remembered: a block
does not run across two ranks' lines. A block that arrives JSON-escaped inside one line
(an HTTP 500 body with literal ``\\n``) is unescaped into its lines.

A block ends when a line that does not continue it arrives, or when its writer has been
quiet for a while (:meth:`TextAssembler.flush`): the journal gives no "end of message".
Open blocks can be saved with the journal cursor (:meth:`TextAssembler.state`), so a
restarted agent neither loses nor repeats the lines of a block that was cut by the restart.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Optional, Tuple

from . import codes as codes_mod
from .plog import HEADER, LEVELS, MAX_RECORD_LINES, Record, parse_record, parse_time

_PREFIX = re.compile(
    r"\[rank(?P<rank>\d+)\]:\s?|\((?P<name>[\w.\-]+)(?: rank=(?P<rank2>\d+))? pid=(?P<pid>\d+)\)\s|>\s"
)
_VLLM = re.compile(r"(?P<level>ERROR|WARNING|INFO|DEBUG|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d \[(?P<file>[\w.]+):"
                   r"(?P<line>\d+)\] ?")
#: lines that only occur inside a message: indented, or its frame
_FRAME = re.compile(
    r"\s|-{10,}\s*$|- (?:Ascend|Framework) Error Message|\(Please search \"Ascend Error Message\""
    r"|TraceBack \(most recent call last\)|there are\(is\) \d+ abnormal|\]\s*$|<exception_print>|\[FUNC:"
)
#: lines that go on an error message (torch_npu's and CANN's parts of it), but start one of their own after others
_ERROR_PART = re.compile(
    r"\[ERROR\] \d{4}-\d\d-\d\d-\d\d:\d\d:\d\d \(PID:|\[Error\]:|\[ERROR\] RecentErrMsg:"
    r"|[EWI][0-9A-Z]\d{4}(?::|\[| {2}|$)|\[PID: \d+\] \d{4}-"
)
_ERRORISH = re.compile(r"[Ee]rror|ERROR|[Ff]ail|Exception|abnormal|Traceback")
_EXCEPTION_LINE = re.compile(r"[\w.]+(?:Error|Exception)\b")
_TIME = re.compile(r"\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d(?:\.\d{3}\.\d{3})?")
_TORCH_LEVEL = re.compile(r"\[(ERROR|WARNING)\] \d{4}-|\[ERROR\] ")


@dataclass
class _Block:
    lines: List[str]
    #: who wrote it: the launcher prefix's rank, name and pid
    source: Tuple[str, str, str]
    info: Dict[str, str] = field(default_factory=dict)
    last: float = 0.0
    blanks: int = 0
    dropped: int = 0
    #: the block says something failed (so a CANN code header after it is its "Ascend Error Message")
    error: bool = False


def strip_prefix(line: str) -> Tuple[str, Dict[str, str]]:
    """A line without its launcher prefixes, and what they said (rank, pid, process, level, file, line)."""
    info: Dict[str, str] = {}
    pos = 0
    while True:
        m = _PREFIX.match(line, pos)
        if m is None or m.end() == pos:
            break
        if m.group("rank") or m.group("rank2"):
            info["rank"] = m.group("rank") or m.group("rank2")
        if m.group("pid"):
            info["pid"], info["process"] = m.group("pid"), m.group("name")
        pos = m.end()
    m = _VLLM.match(line, pos)
    if m is not None:
        info.update(level=m.group("level"), file=m.group("file"), line=m.group("line"))
        pos = m.end()
    return line[pos:], info


def unescape(line: str) -> List[str]:
    """A block JSON-escaped inside one line (literal ``\\n``) -> its lines; other lines unchanged."""
    if "\\n" not in line or not (codes_mod.CANN_CODE.search(line) or "error code is" in line):
        return [line]
    return line.replace('\\"', '"').replace("\\t", "\t").split("\\n")


class TextAssembler:
    """Lines of free text in, :class:`Record` blocks out; one open block per writer (``key``)."""

    def __init__(self, max_lines: int = MAX_RECORD_LINES, max_line_length: int = 65536) -> None:
        self.max_lines = max_lines
        self.max_line_length = max_line_length
        self._open: Dict[Hashable, _Block] = {}
        self.truncated = 0
        #: plog header lines seen (with ASCEND_SLOG_PRINT_TO_STDOUT=1 they reach stdout), by (level, module)
        self.headers: Counter[Tuple[str, str]] = Counter()

    def feed(self, line: str, now: float = 0.0, key: Hashable = "") -> List[Record]:
        """One line (without its newline) from the writer ``key``; returns the blocks it ended."""
        out: List[Record] = []
        for part in unescape(line):
            self._one(part, now, key, out)
        return out

    def _one(self, line: str, now: float, key: Hashable, out: List[Record]) -> None:
        if len(line) > self.max_line_length:
            line = line[:self.max_line_length] + " [...]"
            self.truncated += 1
        body, info = strip_prefix(line.rstrip("\r"))
        source = (info.get("rank", ""), info.get("process", ""), info.get("pid", ""))
        block = self._open.get(key)
        if not body.strip():
            if block is not None:
                block.blanks += 1
            return
        header = HEADER.match(body) if body[:1] == "[" else None
        if header is not None and header.group("level") in LEVELS:
            self.headers[(header.group("level"), header.group("module"))] += 1
        if block is not None and block.source == source and header is None and self._continues(block, body):
            if len(block.lines) + block.blanks < self.max_lines:
                block.lines.extend([""] * block.blanks)
                block.lines.append(body)
            else:
                block.dropped += 1
            block.blanks, block.last = 0, now
            block.error = block.error or bool(_ERRORISH.search(body))
            return
        if block is not None:
            out.append(self._finish(self._open.pop(key)))
        self._open[key] = _Block([body], source, info, now, error=bool(_ERRORISH.search(body)))

    @staticmethod
    def _continues(block: _Block, body: str) -> bool:
        if _FRAME.match(body):
            return True
        if _ERROR_PART.match(body):
            return block.error
        return block.lines[0].startswith("Traceback (most recent call last)") and bool(_EXCEPTION_LINE.match(body))

    def _finish(self, block: _Block) -> Record:
        lines = block.lines
        if block.dropped:
            lines = [*lines, f"... ({block.dropped} more lines)"]
        rec = parse_record("\n".join(lines), max_lines=self.max_lines + 1)
        info = block.info
        for name in ("rank", "pid", "process"):
            if info.get(name):
                rec.extra[name] = info[name]
        if rec.fmt == "text":
            rec.level = info.get("level", "")
            first = lines[0]
            if not rec.level and _TORCH_LEVEL.match(first):
                rec.level = "ERROR" if first.startswith("[ERROR]") else "WARNING"
            if info.get("file"):
                rec.file, rec.line = info["file"], int(info["line"])
            m = _TIME.search(rec.text)
            if m is not None:
                rec.time_text, rec.timestamp = m.group(), parse_time(m.group())
            pid = codes_mod.pid(rec.text)
            if pid is not None:
                rec.pid = int(pid)
        return rec

    def flush(self, now: Optional[float] = None, idle: float = 0.0) -> List[Tuple[Hashable, Record]]:
        """End the blocks whose writer has been quiet for ``idle`` seconds (every block when ``now`` is None);
        returns them with their writers' keys."""
        out = []
        for key in list(self._open):
            block = self._open[key]
            if now is None or now - block.last >= idle:
                out.append((key, self._finish(self._open.pop(key))))
        return out

    def pending(self) -> int:
        return len(self._open)

    def state(self) -> List[Any]:
        """The open blocks, JSON-able (keys must be JSON-able too)."""
        return [[key if not isinstance(key, tuple) else list(key), b.lines, list(b.source), b.info, b.last,
                 b.blanks, b.dropped, b.error] for key, b in self._open.items()]

    def restore(self, state: List[Any], now: Optional[float] = None) -> None:
        """The open blocks :meth:`state` gave; ``now``, when given, is their writers' last time (a clock of this
        process: the saved times were of another)."""
        for key, lines, source, info, last, blanks, dropped, error in state:
            key = tuple(key) if isinstance(key, list) else key
            self._open[key] = _Block(list(lines), (source[0], source[1], source[2]), dict(info),
                                     last if now is None else now, blanks, dropped, bool(error))


def records_of_text(text: str) -> List[Record]:
    """Every block of a stretch of free text, in order (for tests and tools)."""
    asm = TextAssembler()
    out: List[Record] = []
    for line in text.split("\n"):
        out.extend(asm.feed(line))
    return out + [rec for _key, rec in asm.flush()]
