"""``npu-smi`` as a source: run it, read its tables, and fill a :class:`~npuagent_ascend.model.Snapshot`.

npu-smi is there wherever the driver is, but its output is made for eyes, not programs. At
least eight table widths exist (80 to 116 columns), doc copies shift columns by a character,
five-digit values eat their padding (``59985/ 65536``) and pasted copies gain or lose trailing
spaces. So nothing here reads a character position: every table row is split on ``|`` into
cells, cells into tokens, ``a / b`` pairs are one token, and the header row names what each
token is. Layouts differ by what the header says (``Chip  Phy-ID`` on A3, ``Chip  Device`` on
the 310 family, no ``Hugepages`` on old tools), never by width.

Bad input never raises out of a parser. What could not be understood becomes a line in
``Snapshot.warnings`` naming the line (``"line 14: unrecognised row: ..."``) and the rest is
still read: the agent must not die, nor go blind, because one row changed shape.

:func:`read` is the collector's path: ``npu-smi info`` through ``ctx.run`` (no shell, under the
collection's deadline), optionally ``info -m`` for logic ids and ``info -t <form>`` for details.
An output that is an error (``dcmi module initialize failed. ret is -8005``) becomes one
:class:`NpuSmiError` whose message says what the code means and what usually causes it.

Units: npu-smi's MB are MiB; the snapshot holds bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from npuagent.commands import CommandTimeout

from . import errors
from .model import MIB, Chip, Process, Snapshot

__all__ = [
    "ECC_KINDS",
    "FORMS",
    "NpuSmiError",
    "apply_kv",
    "detect_error",
    "parse_info",
    "parse_kv",
    "parse_kv_blocks",
    "parse_list",
    "parse_mapping",
    "parse_proc_mem",
    "parse_topo",
    "parse_watch",
    "read",
]

#: the ``npu-smi info -t <form>`` forms :func:`read` knows how to apply
FORMS = ("usages", "common", "power", "temp", "health", "ecc", "memory")
#: what :func:`apply_kv` accepts: the forms, and ``board`` (bus id and name, card or chip level)
KV_KINDS = (*FORMS, "board")
#: forms asked per chip (``-c``): ``health`` gives error codes only with ``-c``; ``memory`` is only
#: documented with it. The others are asked once per NPU, whose answer has a block per chip.
PER_CHIP_FORMS = frozenset({"health", "memory"})
#: the ``type`` label values of ``npu_ecc_errors_total`` this parser produces
ECC_KINDS = tuple(f"{memory}_{bit}_bit{total}" for memory in ("ddr", "hbm") for bit in ("single", "double")
                  for total in ("", "_aggregate"))

_INT = re.compile(r"[0-9]+")
_MISSING = frozenset({"", "NA", "N/A", "-", "--"})
_VERSION = re.compile(r"npu-smi\s+(\S+)\s+Version:\s+(\S+)")
# one token of a table cell: an ``a / b`` pair (any spacing, even ``59985/ 65536``) or a single value
_ITEM = re.compile(r"(\S+?)\s*/\s*(\S+)|(\S+)")
_COLUMN = re.compile(r"[A-Za-z][\w.-]*\([^)]*\)")
_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]+$")
_IDLE = re.compile(r"No running processes found in NPU\s+(\d+)", re.IGNORECASE)
_RET = re.compile(r"\bret(?:urn)?(?:\s+is|\s*[=:])\s*(-?\d+)", re.IGNORECASE)
_DCMI_INIT = re.compile(r"dcmi\s+mod\w*\s+initiali[sz]\w*\s+failed", re.IGNORECASE)
_LOG_NOISE = re.compile(r"^DrvMngGetConsoleLogLevel failed", re.IGNORECASE)
_NOTICE = re.compile(r"^\[(?:WARNING|WARN|ERROR)\]", re.IGNORECASE)
_HEX_CODE = re.compile(r"\b(?:0[xX])?([0-9A-Fa-f]{6,16})\b")
_ECC_KEY = re.compile(r"^(ddr|hbm)(single|double)bit(errorcount|aggregatetotalerrcnt)$")
_PROC_MEM = re.compile(r"Process id:\s*(\d+)\s+Process name:(.*?)\s*Process memory\(MB\):\s*(\d+)", re.IGNORECASE)

Item = Union[str, Tuple[str, str]]


class NpuSmiError(RuntimeError):
    """npu-smi answered with an error instead of a table; the message says what and, for DCMI codes, why.

    :ivar code: the DCMI return code the output named (``ret is -8020``), or None.
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------------
# small helpers


def _number(text: str) -> Optional[float]:
    """A value as printed, or None for npu-smi's "no value" spellings; ValueError for anything else."""
    text = text.strip()
    if text in _MISSING:
        return None
    return float(text)


def _is_int(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` says yes to "²", which ``int`` refuses."""
    return bool(_INT.fullmatch(text))


def _norm(key: str) -> str:
    """A key without case or whitespace: versions disagree on both (``NPU Temperature (C)``, ``curFreq``)."""
    return re.sub(r"\s+", "", key).lower()


def _cells(stripped: str) -> Tuple[List[str], bool]:
    """The stripped cells of a ``|`` row, and whether the row was closed by its final ``|``."""
    body = stripped[1:]
    complete = body.endswith("|")
    if complete:
        body = body[:-1]
    return [c.strip() for c in body.split("|")], complete


def _items(cell: str) -> List[Item]:
    """The tokens of a value cell, an ``a / b`` pair being one token (a tuple)."""
    out: List[Item] = []
    for m in _ITEM.finditer(cell):
        out.append((m.group(1), m.group(2)) if m.group(3) is None else m.group(3))
    return out


def _column_kind(name: str) -> Optional[str]:
    """What a header column holds, by its name: the same names come in every width and order."""
    n = name.lower()
    for prefix, kind in (("power", "power"), ("temp", "temp"), ("hugepages", "hugepages"), ("aicore", "aicore"),
                         ("memory", "ddr"), ("hbm", "hbm"), ("util", "util")):
        if n.startswith(prefix):
            return kind
    return None


def _short(line: str, limit: int = 120) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# npu-smi info: the summary table

@dataclass
class _Pending:
    """A chip's row A, waiting for its row B."""

    chip: Chip
    line: int


def _set_value(chip: Chip, column: str, item: Item, lineno: int, warnings: List[str]) -> None:
    """Put one table token in the chip field its column names; unreadable tokens become warnings."""
    kind = _column_kind(column)
    if kind is None:
        return
    pair = isinstance(item, tuple)
    try:
        if kind in ("hugepages", "ddr", "hbm"):
            if not pair:
                if str(item) not in _MISSING:
                    warnings.append(f"line {lineno}: {column}: expected 'used / total', got {item!r}")
                return
            used, total = _number(item[0]), _number(item[1])
            if kind == "hugepages":
                chip.hugepages_used, chip.hugepages_total = used, total
            elif not total:
                # 910B and A3 print DDR as a forced "0 / 0": the chip has no such memory, not an empty one
                setattr(chip, f"{kind}_used_bytes", None)
                setattr(chip, f"{kind}_total_bytes", None)
            else:
                setattr(chip, f"{kind}_used_bytes", None if used is None else used * MIB)
                setattr(chip, f"{kind}_total_bytes", total * MIB)
            return
        if pair:
            warnings.append(f"line {lineno}: {column}: expected one value, got {item[0]!r} / {item[1]!r}")
            return
        value = _number(str(item))
    except ValueError:
        shown = f"{item[0]} / {item[1]}" if pair else item
        warnings.append(f"line {lineno}: {column}: unreadable value {shown!r}")
        return
    attr = {"power": "power_watts", "temp": "temperature_celsius", "aicore": "aicore_utilization_percent",
            "util": "utilization_percent"}[kind]
    setattr(chip, attr, value)


def _fill(chip: Chip, columns: Sequence[str], cell: str, lineno: int, warnings: List[str],
          complete: bool = True) -> None:
    """Fill a chip from one value cell, token by token in the header's column order."""
    items = _items(cell)
    if len(items) > len(columns) or (complete and len(items) < len(columns)):
        warnings.append(f"line {lineno}: {len(items)} value{'' if len(items) == 1 else 's'} for the "
                        f"{len(columns)} columns {' '.join(columns)}: {cell!r}")
    for column, item in zip(columns, items):
        _set_value(chip, column, item, lineno, warnings)


class _InfoParser:
    """The state of one walk through an ``npu-smi info`` table: what the headers said, and a row A in waiting.

    Header rows name the columns; where they are missing (a partial paste), the values are
    shapes enough to guess: a cell with two pairs is an HBM layout, one with one pair is not.
    """

    _ROW_A_DEFAULT = ("Power(W)", "Temp(C)", "Hugepages-Usage(page)")

    def __init__(self) -> None:
        self.snap = Snapshot()
        self.warn = self.snap.warnings
        self.row_a: Optional[List[str]] = None
        self.row_b: Optional[List[str]] = None
        #: what the second token of row B's first cell is: "phy_id" (A3), "device" (310 family), None (910/910B)
        self.chip_extra: Optional[str] = None
        self.header_line = 0
        self.first_row = 0
        self.section = "devices"
        self.pending: Optional[_Pending] = None

    def feed(self, lineno: int, s: str) -> None:
        """Take one stripped, non-empty line."""
        if s.startswith("+"):
            return  # borders and separators carry nothing
        if not s.startswith("|"):
            # log lines before the table (HAMi), doc elisions ("..."): not ours. Notices are the operator's.
            if _NOTICE.match(s) or _RET.search(s):
                self.warn.append(f"line {lineno}: {_short(s, 200)}")
            return
        self.first_row = self.first_row or lineno
        cells, complete = _cells(s)
        first = cells[0].split()
        joined = " ".join(cells)
        version = _VERSION.search(joined)
        if version:
            self.snap.tool_version, self.snap.driver_version = version.group(1), version.group(2)
        elif "Process id" in joined:
            self.section = "processes"
        elif first[:2] == ["NPU", "Name"] or (first[:1] == ["NPU"] and "Health" in joined and len(cells) >= 3):
            self.row_a = _COLUMN.findall(cells[2]) if len(cells) >= 3 else None
            self.header_line = lineno
        elif first[:1] == ["Chip"]:
            self.row_b = _COLUMN.findall(cells[2]) if len(cells) >= 3 else None
            self.chip_extra = "phy_id" if "Phy-ID" in cells[0] else "device" if "Device" in cells[0] else None
        elif not _IDLE.search(cells[0]):
            if not complete and len(cells) >= 3:
                # the row was cut: its last token may be a cut number ("59985/ 655"), worse than none
                kept = _items(cells[-1])[:-1]
                cells[-1] = " ".join(f"{i[0]} / {i[1]}" if isinstance(i, tuple) else i for i in kept)
                self.warn.append(f"line {lineno}: truncated row, its last value left out: {_short(s)}")
            elif not complete:
                self.warn.append(f"line {lineno}: truncated row: {_short(s)}")
            if not first or not _is_int(first[0]):
                self.warn.append(f"line {lineno}: unrecognised row: {_short(s)}")
            elif self.section == "processes":
                self._process(lineno, s, cells, first)
            else:
                self._chip_row(lineno, s, cells, first, complete)

    def _process(self, lineno: int, s: str, cells: List[str], first: List[str]) -> None:
        """``<npu> <chip> | <pid> | <name, empty in containers> | <MiB> [| <pid in container>]``"""
        if len(first) != 2 or not _is_int(first[1]) or len(cells) < 4 or not _is_int(cells[1]):
            self.warn.append(f"line {lineno}: unrecognised row: {_short(s)}")
            return
        try:
            memory = _number(cells[3]) or 0.0
        except ValueError:
            self.warn.append(f"line {lineno}: Process memory(MB): unreadable value {cells[3]!r}")
            return
        self.snap.processes.append(Process(npu_id=int(first[0]), chip_id=int(first[1]), pid=int(cells[1]),
                                           name=cells[2], memory_bytes=memory * MIB))

    def _chip_row(self, lineno: int, s: str, cells: List[str], first: List[str], complete: bool) -> None:
        second = cells[1] if len(cells) > 1 else None
        bus_like = second is not None and (second in _MISSING or bool(_BUS_ID.match(second)))
        all_int = all(_is_int(t) for t in first)
        if bus_like and all_int and len(first) <= 2:
            self._row_b(lineno, s, cells, first, complete)
        elif self.pending is not None and all_int and len(first) <= 2 and (not complete or second is None):
            self._row_b(lineno, s, cells, first, complete)  # a chip row cut inside its bus id
        elif len(first) >= 2:
            self._row_a(lineno, cells, first, complete)
        else:
            self.warn.append(f"line {lineno}: unrecognised row: {_short(s)}")

    def _row_a(self, lineno: int, cells: List[str], first: List[str], complete: bool) -> None:
        """``<npu id> <name> | <health> | <power> <temp> [<hugepages used / total>]``"""
        if self.pending is not None:
            self.flush()
        chip = Chip(npu_id=int(first[0]), chip_id=-1, name=" ".join(first[1:]))
        self.pending = _Pending(chip, lineno)
        if len(cells) > 1 and cells[1]:
            chip.health = cells[1]
        if len(cells) >= 3:
            _fill(chip, self.row_a or list(self._ROW_A_DEFAULT), cells[2], lineno, self.warn, complete)

    def _row_b(self, lineno: int, s: str, cells: List[str], first: List[str], complete: bool) -> None:
        """``<chip> [<phy id | logic id>] | <bus id | NA> | <aicore> <memory used / total> [<hbm used / total>]``"""
        if self.pending is None:
            self.warn.append(f"line {lineno}: chip row without its NPU row: {_short(s)}")
            return
        chip, self.pending = self.pending.chip, None
        chip.chip_id = int(first[0])
        pairs = sum(isinstance(i, tuple) for i in _items(cells[2])) if len(cells) >= 3 else 0
        if len(first) == 2:
            extra = self.chip_extra
            if extra is None and self.row_b is None and len(cells) >= 3:
                extra = "phy_id" if pairs >= 2 else "device"
            if extra == "device":
                chip.device_id = int(first[1])
        if len(cells) > 1 and _BUS_ID.match(cells[1]):
            chip.bus_id = cells[1]
        self.snap.chips.append(chip)
        if len(cells) >= 3:
            columns = self.row_b
            if columns is None:
                columns = ["AICore(%)", "Memory-Usage(MB)"] + (["HBM-Usage(MB)"] if pairs >= 2 else [])
            _fill(chip, columns, cells[2], lineno, self.warn, complete)

    def flush(self) -> None:
        """Keep a row A whose row B never came (a truncated table): what it said is still true."""
        p, self.pending = self.pending, None
        if p is None:
            return
        p.chip.chip_id = sum(1 for c in self.snap.chips if c.npu_id == p.chip.npu_id)
        self.warn.append(f"line {p.line}: NPU row without its chip row; chip id {p.chip.chip_id} assumed")
        self.snap.chips.append(p.chip)

    def finish(self) -> Snapshot:
        self.flush()
        if self.snap.chips and self.header_line == 0:
            self.warn.append(f"line {self.first_row}: no header row before it: columns were guessed from the values")
        if self.first_row and not self.snap.chips:
            self.warn.append(f"line {self.first_row}: a table without a single chip row")
        _link_processes(self.snap)
        return self.snap


def parse_info(text: str) -> Snapshot:
    """Parse ``npu-smi info``: every chip (rows A and B), the process table, versions and warnings.

    Works for 910, 910B, A3 (two dies per NPU), 310, 310P (and Duo cards) and 310B, tools from
    20.2 to 26.x. Chips are keyed by ``(npu_id, chip_id)`` as npu-smi numbers them; ``device_id``
    is filled where the table gives the logic id (the 310 family's ``Device``). Rows A and B are
    paired in order (row A of every chip repeats its NPU id, so multi-chip NPUs need nothing more).
    """
    parser = _InfoParser()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        s = raw.strip()
        if not s:
            continue
        try:
            parser.feed(lineno, s)
        except Exception as e:  # a parser bug must cost one line, not the whole collection
            parser.warn.append(f"line {lineno}: could not be read ({type(e).__name__}: {e}): {_short(s)}")
    return parser.finish()


def _link_processes(snap: Snapshot) -> None:
    """Give each process its chip's logic id, where the chip's is known."""
    device_of = {(c.npu_id, c.chip_id): c.device_id for c in snap.chips}
    for p in snap.processes:
        p.device_id = device_of.get((p.npu_id, p.chip_id))


# --------------------------------------------------------------------------------------------------
# npu-smi info -m: the logic ids


def parse_mapping(text: str) -> Dict[Tuple[int, int], Optional[int]]:
    """Parse ``npu-smi info -m``: ``(npu_id, chip_id) -> logic id`` (the ``device_id``), None where it is ``-``.

    The header names the columns (A3 adds ``Chip Phy-ID``); the chip name, last, may contain spaces
    (``Ascend 910B3``). MCU rows are not chips and are left out.
    """
    out: Dict[Tuple[int, int], Optional[int]] = {}
    columns = ["npu id", "chip id", "chip logic id", "chip name"]
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.lower().startswith("npu id"):
            columns = [c.lower() for c in re.split(r"\s{2,}|\t", s) if c.strip()]
            continue
        tokens = s.split()
        fixed = len(columns) - 1
        if not _is_int(tokens[0]) or len(tokens) < fixed:
            continue  # "There is no NPU card on this server." and other prose
        values = dict(zip(columns[:fixed], tokens[:fixed]))
        name = " ".join(tokens[fixed:])
        if name.lower() == "mcu":
            continue
        npu, chip, logic = values.get("npu id", ""), values.get("chip id", ""), values.get("chip logic id", "-")
        if not (_is_int(npu) and _is_int(chip)):
            continue
        out[(int(npu), int(chip))] = int(logic) if _is_int(logic) else None
    return out


# --------------------------------------------------------------------------------------------------
# npu-smi info -t <form>: key / value


def parse_kv_blocks(text: str) -> List[Dict[str, str]]:
    """The ``key : value`` lines of a ``-t`` output, one dict per blank-line-separated block.

    Without ``-c`` an answer is a header block (``NPU ID``, ``Chip Count``), a block per chip and
    MCU blocks; ``Chip ID`` comes first in some forms and last in others, so a block is only
    known once it is complete. Keys and values are stripped; values may contain ``:`` (bus ids),
    so a line splits on its first colon. Lines without one (``This device does not support ...``)
    are left out.
    """
    blocks: List[Dict[str, str]] = []
    current: Dict[str, str] = {}
    for line in text.splitlines():
        s = line.strip()
        if not s:
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = s.partition(":")
        key = key.strip()
        if sep and key:
            current.setdefault(key, value.strip())
    if current:
        blocks.append(current)
    return blocks


def parse_kv(text: str) -> Dict[str, str]:
    """Every ``key : value`` of a ``-t`` output in one dict (the first of a repeated key wins).

    Right for the ``-c`` answers, which hold one chip; for a whole NPU's answer use
    :func:`parse_kv_blocks`, which keeps the chips apart.
    """
    out: Dict[str, str] = {}
    for block in parse_kv_blocks(text):
        for key, value in block.items():
            out.setdefault(key, value)
    return out


_KV_FLOATS = {
    "aicoreusagerate(%)": "aicore_utilization_percent",
    "aivectorusagerate(%)": "vector_utilization_percent",
    "vectorcoreusagerate(%)": "vector_utilization_percent",
    "aicpuusagerate(%)": "aicpu_utilization_percent",
    "hbmbandwidthusagerate(%)": "hbm_bandwidth_utilization_percent",
    "npuutilization(%)": "utilization_percent",
    "temperature(c)": "temperature_celsius",
    "nputemperature(c)": "temperature_celsius",
    "npureal-timepower(w)": "power_watts",
    "aicorecurfreq(mhz)": "aicore_frequency_mhz",
    "ratedpowerdissipation(w)": "power_limit_watts",
}
# (capacity keys, usage-rate keys, field prefix): the usages / memory / common spellings by family
_KV_MEMORY = (
    (("hbmcapacity(mb)",), ("hbmusagerate(%)",), "hbm"),
    (("ddrcapacity(mb)", "memorycapacity(mb)", "totalddrcapacity(mb)"), ("ddrusagerate(%)", "memoryusagerate(%)"),
     "ddr"),
)
_KV_HUGEPAGES = (("ddrhugepagestotal(page)", "hugepagestotal(page)"),
                 ("ddrhugepagesusagerate(%)", "hugepagesusagerate(%)"))


def apply_kv(chip: Chip, kind: str, kv: Dict[str, str]) -> List[str]:
    """Fill ``chip`` with what one ``-t <kind>`` answer (one chip's block) gives; return what was unreadable.

    Keys match without case or spacing (``NPU Temperature (C)``, ``Aicore curFreq(MHZ)``). What
    each form gives: usages: AI core / vector / AI CPU / HBM bandwidth / overall utilization and
    memory (``Capacity`` exact; ``used`` from the integer ``Usage Rate`` only where the table has
    not given the exact MB); common: temperature, power, current AI core frequency, rated power;
    power; temp; health: health text and the error codes as ints (``fault_codes``); ecc: the
    single/double bit counts (:data:`ECC_KINDS`); memory: DDR/HBM sizes; board: bus id and name
    where the table had none. A DDR capacity of 0 (910B, A3) means no DDR. ``NA`` is no value.
    """
    problems: List[str] = []
    if kind not in KV_KINDS:
        return [f"unknown -t form {kind!r}"]
    values = {_norm(k): (k, v) for k, v in kv.items()}

    def number(norm_key: str) -> Optional[float]:
        key, text = values[norm_key]
        try:
            return _number(text)
        except ValueError:
            problems.append(f"-t {kind}: {key} is {text!r}, not a number")
            return None

    for norm_key, attr in _KV_FLOATS.items():
        if norm_key in values:
            value = number(norm_key)
            if value is not None:
                setattr(chip, attr, value)

    for capacity_keys, rate_keys, prefix in _KV_MEMORY:
        capacity = next((number(k) for k in capacity_keys if k in values), None)
        if any(k in values for k in capacity_keys) and capacity is not None:
            if capacity == 0:
                setattr(chip, f"{prefix}_total_bytes", None)
                setattr(chip, f"{prefix}_used_bytes", None)
            else:
                setattr(chip, f"{prefix}_total_bytes", capacity * MIB)
        rate = next((number(k) for k in rate_keys if k in values), None)
        total = getattr(chip, f"{prefix}_total_bytes")
        if rate is not None and total and getattr(chip, f"{prefix}_used_bytes") is None:
            # an integer percentage of a size in MiB: whole MiB is all the precision there is
            setattr(chip, f"{prefix}_used_bytes", float(round(total / MIB * rate / 100.0)) * MIB)

    total_keys, rate_keys = _KV_HUGEPAGES
    pages = next((number(k) for k in total_keys if k in values), None)
    if pages is not None:
        chip.hugepages_total = pages
    rate = next((number(k) for k in rate_keys if k in values), None)
    if rate is not None and chip.hugepages_total is not None and chip.hugepages_used is None:
        chip.hugepages_used = float(round(chip.hugepages_total * rate / 100.0))

    for norm_key in ("healthstatus", "health"):
        if norm_key in values and values[norm_key][1] not in _MISSING:
            chip.health = values[norm_key][1]
            break
    if "errorcode" in values:
        text = values["errorcode"][1]
        codes = [] if text in _MISSING else [int(m.group(1), 16) for m in _HEX_CODE.finditer(text)]
        if text not in _MISSING and not codes:
            problems.append(f"-t {kind}: Error Code {text!r} holds no hex code")
        chip.fault_codes = codes

    for norm_key in values:
        m = _ECC_KEY.match(norm_key)
        if m:
            count = number(norm_key)
            if count is not None:
                total = "_aggregate" if m.group(3).startswith("aggregate") else ""
                chip.ecc_errors[f"{m.group(1)}_{m.group(2)}_bit{total}"] = count

    if "pciebusinfo" in values and not chip.bus_id and values["pciebusinfo"][1] not in _MISSING:
        chip.bus_id = values["pciebusinfo"][1]
    if kind == "board" and "chipname" in values and not chip.name:
        chip.name = values["chipname"][1]
    return problems


def parse_list(text: str) -> Dict[int, int]:
    """Parse ``npu-smi info -l``: ``npu_id -> chip count`` (``Total Count`` / ``Card Count`` is their number)."""
    out: Dict[int, int] = {}
    for block in parse_kv_blocks(text):
        values = {_norm(k): v for k, v in block.items()}
        npu, count = values.get("npuid", ""), values.get("chipcount", "")
        if _is_int(npu) and _is_int(count):
            out[int(npu)] = int(count)
    return out


def parse_proc_mem(text: str, npu_id: int, chip_id: int) -> List[Process]:
    """Parse ``npu-smi info -t proc-mem -i <npu> -c <chip>``: the processes holding the chip's memory.

    ``No process in device.`` is an empty list. Names are truncated by the tool, as in the table.
    """
    out = []
    for m in _PROC_MEM.finditer(text):
        out.append(Process(npu_id=npu_id, chip_id=chip_id, pid=int(m.group(1)), name=m.group(2).strip(),
                           memory_bytes=float(m.group(3)) * MIB))
    return out


def parse_watch(text: str) -> List[Dict[str, Optional[float]]]:
    """Parse ``npu-smi info watch`` output: one dict per data row, keyed by the header's column names.

    Column names contain spaces (``AI Core(%)``) and are only one space apart (``ChipId(Idx) Pwr(W)``),
    so they are read as "text up to a parenthesised unit"; data rows are plain tokens. ``NA`` and
    the A3 die-1 power ``-`` are None. The command streams forever: run it with a deadline.
    """
    columns: List[str] = []
    rows: List[Dict[str, Optional[float]]] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("NpuID"):
            columns = re.findall(r"\S[^()]*?\([^)]*\)", s)
            continue
        tokens = s.split()
        if not columns or len(tokens) < 2 or not (_is_int(tokens[0]) and _is_int(tokens[1])):
            continue
        row: Dict[str, Optional[float]] = {}
        for column, token in zip(columns, tokens):
            try:
                row[column] = _number(token)
            except ValueError:
                row[column] = None
        rows.append(row)
    return rows


def parse_topo(text: str) -> Dict[str, Dict[str, str]]:
    """Parse ``npu-smi info -t topo``: ``row NPU -> {column NPU: link, "CPU Affinity": cpus}``.

    Links are as printed (``X`` self, ``HCCS``, ``PIX``, ``PXB``, ``PHB``, ``SYS``); the legend is not read.
    """
    names: List[str] = []
    out: Dict[str, Dict[str, str]] = {}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0].lower().startswith("legend"):
            break
        if not names and re.match(r"^NPU\d+$", tokens[0]) and len(tokens) > 1 and re.match(r"^NPU\d+$", tokens[1]):
            names = [t for t in tokens if re.match(r"^NPU\d+$", t)]
            continue
        if names and tokens[0] in names:
            row = dict(zip(names, tokens[1: 1 + len(names)]))
            rest = tokens[1 + len(names):]
            if rest:
                row["CPU Affinity"] = " ".join(rest)
            out[tokens[0]] = row
    return out


# --------------------------------------------------------------------------------------------------
# errors


def _classify(text: str, returncode: Optional[int]) -> Optional[Tuple[str, Optional[int]]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    has_table = any(line.startswith(("|", "+-", "+=")) for line in lines)
    if has_table and returncode in (0, None):
        return None
    for line in lines:
        m = _RET.search(line)
        if m and not line.startswith("|") and not _LOG_NOISE.match(line):  # "(ret=4)": the driver's log, not DCMI
            code = int(m.group(1))
            if _DCMI_INIT.search(line):
                what = "dcmi module initialize failed"
            else:
                what = line[: m.start()].strip().rstrip(".,;: ") or "npu-smi failed"
            label = f"{code} {errors.NAMES[code]}" if code in errors.NAMES else str(code)
            return f"npu-smi: {what} ({label}): {errors.describe(code)}", code
    meaningful = [line for line in lines if not _LOG_NOISE.match(line)] or lines
    detail = f": {_short(meaningful[0], 200)}" if meaningful else " (no output)"
    if returncode not in (0, None):
        return f"npu-smi exited with status {returncode}{detail}", None
    return f"npu-smi printed no table{detail}", None


def detect_error(text: str, returncode: Optional[int]) -> Optional[str]:
    """One clear message when ``npu-smi info`` answered with an error instead of a table, else None.

    ``dcmi module initialize failed. ret is -8005`` (and the ``-8020`` "because the device is used"
    variant) become ``npu-smi: dcmi module initialize failed (-8005 DCMI_ERR_CODE_INNER_ERR): <what
    it means and its usual cause>``. A non-zero exit, or output without a table, is an error too.
    """
    found = _classify(text, returncode)
    return None if found is None else found[0]


# --------------------------------------------------------------------------------------------------
# running npu-smi


class _OutOfTime(Exception):
    """The collection's deadline is spent: no more npu-smi calls this time."""


@dataclass
class _Runner:
    """The extra calls of one :func:`read`: each costs seconds, all share the collection's deadline."""

    ctx: Any
    command: Sequence[str]
    snap: Snapshot

    def run(self, args: Sequence[str]) -> Optional[str]:
        """stdout of ``npu-smi <args>``, or None (with a warning) when it failed."""
        shown = "npu-smi " + " ".join(args)
        if self.ctx.remaining() <= 0:
            self.snap.warnings.append(f"{shown}: not run, the collection's deadline has passed")
            raise _OutOfTime
        try:
            result = self.ctx.run([*self.command, *args])
        except CommandTimeout:
            self.snap.warnings.append(f"{shown}: killed at the collection's deadline; later details skipped")
            raise _OutOfTime from None
        except OSError as e:
            self.snap.warnings.append(f"{shown}: {e}")
            return None
        if result.returncode != 0:
            found = _classify(result.stdout + "\n" + result.stderr, result.returncode)
            self.snap.warnings.append(f"{shown}: {found[0] if found else 'failed'}")
            return None
        return result.stdout

    def no_answer(self, args: Sequence[str], out: str) -> None:
        """Say that a call printed nothing usable (``This device does not support querying ...``)."""
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        self.snap.warnings.append(f"npu-smi {' '.join(args)}: {_short(lines[0], 200) if lines else 'empty answer'}")


def _apply_mapping(runner: _Runner) -> None:
    out = runner.run(["info", "-m"])
    if out is None:
        return
    mapping = parse_mapping(out)
    if not mapping:
        runner.no_answer(["info", "-m"], out)
        return
    missing = []
    for chip in runner.snap.chips:
        logic = mapping.get((chip.npu_id, chip.chip_id))
        if logic is not None:
            chip.device_id = logic
        elif chip.device_id is None:
            missing.append(f"{chip.npu_id}/{chip.chip_id}")
    if missing:
        runner.snap.warnings.append(f"npu-smi info -m: no logic id for NPU/chip {', '.join(missing)}")


def _route(blocks: List[Dict[str, str]], chips: List[Chip], form: str, shown: str, warnings: List[str]) -> None:
    """Apply each block of a ``-t`` answer to its chip (by ``Chip ID``); MCU blocks give the card's power.

    A block without ``Chip ID`` or ``Chip Name`` is the chip's own when only one was asked for
    (``-c``, or an NPU with one chip). The MCU's power is the whole card's (310P prints ``NA`` per
    chip): it is given to the NPU's first chip when no chip has a power of its own, as npu-smi
    itself reports an A3's power once, on die 0.
    """
    by_id = {c.chip_id: c for c in chips}
    card_power: Optional[float] = None
    for block in blocks:
        norm = {_norm(k): v for k, v in block.items()}
        if set(norm) <= {"npuid", "chipcount"}:
            continue
        if "chipid" in norm:
            chip = by_id.get(int(norm["chipid"])) if _is_int(norm["chipid"]) else None
            if chip is None:
                warnings.append(f"{shown}: Chip ID {norm['chipid']!r} is not in the table")
                continue
        elif "chipname" in norm:  # the MCU ("mcu" / "MCU"): not a chip
            for key in ("npureal-timepower(w)", "powerdissipation(w)"):
                if key in norm and card_power is None:
                    try:
                        card_power = _number(norm[key])
                    except ValueError:
                        warnings.append(f"{shown}: MCU power {norm[key]!r} is not a number")
            continue
        elif len(chips) == 1:
            chip = chips[0]
        else:
            warnings.append(f"{shown}: a block without Chip ID on an NPU of {len(chips)} chips")
            continue
        warnings.extend(f"{shown}: {p}" for p in apply_kv(chip, form, block))
    if card_power is not None and chips and all(c.power_watts is None for c in chips):
        min(chips, key=lambda c: c.chip_id).power_watts = card_power


def _apply_forms(runner: _Runner, forms: Sequence[str]) -> None:
    by_npu: Dict[int, List[Chip]] = {}
    for chip in runner.snap.chips:
        by_npu.setdefault(chip.npu_id, []).append(chip)
    for form in forms:
        if form not in FORMS:
            runner.snap.warnings.append(f"npu-smi info -t {form}: not a form this collector reads ({', '.join(FORMS)})")
            continue
        unsupported = False
        for npu_id, chips in by_npu.items():
            asks = ([(c, ["-c", str(c.chip_id)]) for c in chips] if form in PER_CHIP_FORMS else [(None, [])])
            for only, extra in asks:
                args = ["info", "-t", form, "-i", str(npu_id), *extra]
                out = runner.run(args)
                if out is None:
                    continue  # this NPU failed (held by a container, ...): the others may still answer
                blocks = parse_kv_blocks(out)
                if not blocks:  # "This device does not support querying ...": every chip of a host answers alike
                    runner.no_answer(args, out)
                    unsupported = True
                    break
                _route(blocks, [only] if only is not None else chips, form,
                       "npu-smi " + " ".join(args), runner.snap.warnings)
            if unsupported:
                break


def read(ctx: Any, command: Sequence[str] = ("npu-smi",), forms: Sequence[str] = (),
         mapping: bool = False) -> Snapshot:
    """Run ``npu-smi info`` (and, if asked, ``info -m`` and ``info -t <form>``) and return the snapshot.

    :param ctx: the collector's :class:`~npuagent.context.PluginContext`; every call goes through
        ``ctx.run`` and so shares the collection's deadline.
    :param command: npu-smi as an argv (a path, or a stand-in with its own arguments).
    :param forms: ``-t`` forms to read per NPU (``health``, ``memory``: per chip, with ``-c``).
        Each is one more process per NPU, seconds on a busy host: the details stop, with a
        warning, when the deadline comes, and the table read so far is still returned.
    :param mapping: also run ``info -m`` for the logic id (``device_id``) of chips whose table lacks it.
    :raises NpuSmiError: ``npu-smi info`` answered with an error, exited non-zero or printed no table.
    :raises npuagent.commands.CommandNotFound: there is no such program.
    :raises npuagent.commands.CommandTimeout: ``npu-smi info`` itself ran past the deadline.
    """
    result = ctx.run([*command, "info"])
    found = _classify(result.stdout + ("\n" + result.stderr if result.stderr else ""), result.returncode)
    if found is not None:
        raise NpuSmiError(*found)
    snap = parse_info(result.stdout)
    runner = _Runner(ctx, tuple(command), snap)
    try:
        if mapping:
            _apply_mapping(runner)
        if forms:
            _apply_forms(runner, forms)
    except _OutOfTime:
        pass
    _link_processes(snap)
    return snap
