"""The CANN "plog" line format: one header line per message, and what follows it.

CANN writes every host and device application log line as (CANN Log Reference, "log format")::

    [Level] ModuleName(PID,PName):YYYY-MM-DD-hh:mm:ss.mmm.uuu [FileName:LineNumber]LogContent

Lines that do not start with such a header (an ``<exception_print>`` register dump, a
backtrace, a LINK_ERROR_INFO row printed without a header) belong to the message above
them, so a message is a header line plus the lines up to the next header: a *record*.

Two ways through a stretch of bytes, because the two costs are very different:

* :func:`scan` is the hot path. A log at INFO level is millions of lines of which a few
  matter; one regular-expression pass over a whole chunk returns, per line, only the
  ``LEVEL] MODULE`` key (counted at C speed by a ``Counter``) and, for ERROR lines only,
  the whole record. No Python code runs per INFO line.
* :func:`parse_record` turns one record's text into a :class:`Record` with every field:
  done for the few records :func:`scan` hands out, and for journal lines.

Module-specific prefixes inside the content (HCCL's ``[tid]``, the old
``[hccl-<pid>-<dev>-<ts>-<group>][<rank>]`` tag, RUNTIME's bare tid, DRV's
``[ascend][curpid: ..][drv][sub][func line]``, the device scheduler's
``<seq> (dieid:..) file.c:line``) are parsed as far as they name a source and line.
MindSpore prints its own lines in a look-alike format whose parentheses hold
``pid,thread,name``; they are parsed too (``fmt = "mindspore"``), since its stdout
carries "Ascend Error Message" blocks.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

#: Levels CANN prints (slog.h), WARN as some versions spell it, and MindSpore's own two.
LEVELS = ("ERROR", "WARNING", "WARN", "INFO", "DEBUG", "EVENT", "TRACE", "CRITICAL", "EXCEPTION")
_LEVEL_SET = frozenset(LEVELS)
#: Levels whose records are parsed and classified (the others are only counted).
ERROR_LEVELS = frozenset(("ERROR", "CRITICAL", "EXCEPTION"))

#: Non-error lines that still say something is wrong, found by a plain substring search:
#: HCCL reports a peer rank's heartbeat as lost at INFO level.
NEEDLES = (b"status[LOST]",)

HEADER = re.compile(
    r"\[(?P<level>[A-Z]+)\] (?P<module>[A-Z0-9_]+)\((?P<pid>-?\d+),(?P<pname>[^)\n]*)\):\s?"
    r"(?P<ts>\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d\.\d{3}(?:\.\d{3})?)\s*(?P<rest>.*)"
)

# One pass over a chunk (which the caller prefixes with "\n"): an ERROR line with its continuation lines
# (lines that are not headers), or the key of any other header line.
_SCAN = re.compile(
    rb"\n\[(ERROR\] [^\n]*(?:\n(?!\[[A-Z]+\] [A-Z0-9_]+\()[^\n]*)*|[A-Z]+\] [A-Z0-9_]+(?=\())"
)
_ERROR_MODULE = re.compile(rb"ERROR\] ([A-Z0-9_]+)\(")
_HEADER_START = re.compile(rb"\[[A-Z]+\] [A-Z0-9_]+\(-?\d+,")

_SOURCE = re.compile(r"(?:\[status:(?P<status>\w+)\]\s*)?\[(?P<file>[^\[\]\s:]+):(?P<line>\d+)\]\s?(?P<msg>.*)")
_DRV = re.compile(
    r"\[ascend\]\[curpid: ?\d+, ?\d+\]\[drv\]\[(?P<sub>[^\]]+)\]\[(?P<file>\S+) (?P<line>\d+)\]\s?(?P<msg>.*)"
)
_TSCH = re.compile(r"\d+ \((?P<ctx>[^)]*)\) (?P<file>[\w.]+):(?P<line>\d+) (?P<msg>.*)")
_SEQ_CTX = re.compile(r"\d+ \((?P<ctx>[^)]*)\) (?P<msg>.*)")
_OLD_HCCL_TAG = re.compile(r"\[hccl-(?P<pid>\d+)-(?P<dev>\d+)-(?P<ts>\d+)-(?P<group>[^\]]+)\]\[(?P<rank>\d+)\]")
_TID = re.compile(r"(?:\s?\[\d+\])+|\s?\d+ (?=\w)|tid:\d+,|\(tid:\d+\)\s?|>>> \(tid:\d+\)\s?")
_MS_FUNC = re.compile(r"\s?[\w:~]+\]\s")

#: file names CANN gives its logs: plog-<pid>_<created>.log, device-<pid>_<created>.log (a hyphen in some docs)
LOG_NAME = re.compile(r"(?:plog|device)-(?P<pid>\d+)[_-](?P<created>\d{14,17})\.log$")

MAX_RECORD_LINES = 200


@dataclass
class Record:
    """One message: a header line and the lines that belong to it, or a block of free text.

    ``timestamp`` is the line's own time as seconds since the epoch, read as local time
    (CANN prints no zone); ``time_text`` is the time as printed.
    """

    text: str
    level: str = ""
    module: str = ""
    pid: Optional[int] = None
    process: str = ""
    time_text: str = ""
    timestamp: Optional[float] = None
    file: str = ""
    line: Optional[int] = None
    message: str = ""
    #: "plog", "mindspore" (its look-alike lines), or "text" (a block of free text: stderr, journal)
    fmt: str = "plog"
    #: fields a format states outright (the old HCCL tag's rank, a launcher's rank, pid and process)
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        return self.text.count("\n") + 1


_MINUTES: Dict[str, Optional[float]] = {}


def parse_time(text: str) -> Optional[float]:
    """``2025-07-23-03:49:57.177.194`` (or with a space or ``T`` for the middle dash, or ms only)
    -> seconds since the epoch, local time; None when it is not a valid time."""
    try:
        minute = _MINUTES.get(text[:16], 0.0)
        if minute == 0.0:
            y, mo, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
            h, mi = int(text[11:13]), int(text[14:16])
            ok = 1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60
            minute = time.mktime((y, mo, d, h, mi, 0, 0, 0, -1)) if ok else None
            if len(_MINUTES) > 4096:
                _MINUTES.clear()
            _MINUTES[text[:16]] = minute
        s = int(text[17:19])
        if minute is None or s > 60:
            return None
        frac = 0.0
        tail = text[19:]
        if tail[:1] == ".":
            parts = tail[1:].split(".")
            frac = int(parts[0][:3]) / 1e3
            if len(parts) > 1 and parts[1][:3].isdigit():
                frac += int(parts[1][:3]) / 1e6
        return minute + s + frac
    except (ValueError, OverflowError, IndexError):
        return None


def parse_header(line: str) -> Optional[Record]:
    """A header line -> a Record of that one line (None when the line is not a header)."""
    m = HEADER.match(line)
    if m is None or m.group("level") not in _LEVEL_SET:
        return None
    pname = m.group("pname")
    fmt = "plog"
    if "," in pname:  # MindSpore: pid,thread,name
        fmt = "mindspore"
        pname = pname.rsplit(",", 1)[1]
    pid = int(m.group("pid"))
    rec = Record(text=line, level=m.group("level"), module=m.group("module"), pid=pid if pid >= 0 else None,
                 process=pname, time_text=m.group("ts"), timestamp=parse_time(m.group("ts")), fmt=fmt)
    _parse_rest(rec, m.group("rest"))
    return rec


def _parse_rest(rec: Record, rest: str) -> None:
    """Source file and line, and the message with thread ids and tags taken off."""
    msg = rest
    src = _SOURCE.match(rest)
    if src is not None:
        rec.file, rec.line, msg = src.group("file"), int(src.group("line")), src.group("msg")
        if rec.fmt == "mindspore":
            f = _MS_FUNC.match(msg)
            if f is not None:
                msg = msg[f.end():]
    else:
        for pattern in (_DRV, _TSCH):
            m = pattern.match(rest)
            if m is not None:
                rec.file, rec.line, msg = m.group("file"), int(m.group("line")), m.group("msg")
                break
        else:
            m = _SEQ_CTX.match(rest)
            if m is not None:
                msg = m.group("msg")
    tag = _OLD_HCCL_TAG.match(msg.lstrip())
    if tag is not None:
        # the tag's second field is not always the device the message names (device[4] beside a tag's 0)
        rec.extra["rank"] = tag.group("rank")
        msg = msg.lstrip()[tag.end():]
    else:
        t = _TID.match(msg)
        if t is not None:
            msg = msg[t.end():]
    rec.message = msg.strip()


def parse_record(text: str, max_lines: int = MAX_RECORD_LINES) -> Record:
    """A record's text (its header line, then continuation lines) -> a Record.

    Text that does not start with a header is kept as a ``text`` record (an orphan continuation,
    a line of another format); at most ``max_lines`` lines are kept.
    """
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
    first = lines[0] if lines else ""
    rec = parse_header(first)
    if rec is None:
        return Record(text="\n".join(lines), message=first.strip(), fmt="text")
    rec.text = "\n".join(lines)
    return rec


def key_of(key: bytes) -> Tuple[str, str]:
    """``b"INFO] HCCL"`` -> ("INFO", "HCCL")."""
    level, _, module = key.decode("ascii", "replace").partition("] ")
    return level, module


def last_record_start(data: bytes) -> int:
    """Where the last header line of ``data`` starts (0 when none after the first byte).

    The record starting there may still gain continuation lines, so a reader that is not
    at a final end of a file holds it back and reads it again next time.
    """
    pos = len(data) - 1
    while True:
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return 0
        if _HEADER_START.match(data, pos + 1):
            return pos + 1


def scan(data: bytes, final: bool = True) -> Tuple[int, Counter[bytes], List[bytes]]:
    """Count the header lines of ``data`` (complete lines) and pick out the records worth parsing.

    :param data: complete lines (ending with a newline), starting at a record boundary.
    :param final: no more lines can belong to the last record (the file is idle, gone or
        finished); otherwise the last record is left for the next call.
    :return: ``(consumed, counts, records)``: how many bytes of ``data`` were dealt with,
        ``LEVEL] MODULE`` keys with their counts (unknown levels are left out), and the text
        of every ERROR record and of the lines that carry a :data:`NEEDLES` string, as bytes.
    """
    end = len(data) if final else last_record_start(data)
    if end <= 0:
        return 0, Counter(), []
    chunk = b"\n" + data[:end] if end < len(data) else b"\n" + data
    found = Counter(_SCAN.findall(chunk))
    counts: Counter[bytes] = Counter()
    records: List[bytes] = []
    for key, n in found.items():
        if key[:7] == b"ERROR] ":
            header = _ERROR_MODULE.match(key)
            if header is not None:  # an "[ERROR] " line of another shape (torch_npu's) is a record, not a message
                counts[b"ERROR] " + header.group(1)] += n
            records.extend([b"[" + key] * n)
        elif key.partition(b"]")[0].decode("ascii", "replace") in _LEVEL_SET:
            counts[key] = n
    for needle in NEEDLES:
        pos = chunk.find(needle)
        while pos >= 0:
            start = chunk.rfind(b"\n", 0, pos) + 1
            stop = chunk.find(b"\n", pos)
            stop = len(chunk) if stop < 0 else stop
            line = chunk[start:stop].rstrip(b"\r")
            if not line.startswith(b"[ERROR] "):
                records.append(line)
            pos = chunk.find(needle, stop)
    return end, counts, records


def records_of(text: str) -> List[Record]:
    """Every record of a stretch of plog text, in order (for tests and tools; the tailer uses :func:`scan`)."""
    out: List[Record] = []
    current: List[str] = []
    for line in text.split("\n"):
        if HEADER.match(line) and current:
            out.append(parse_record("\n".join(current)))
            current = []
        current.append(line)
    if current and any(s.strip() for s in current):
        out.append(parse_record("\n".join(current)))
    return out
