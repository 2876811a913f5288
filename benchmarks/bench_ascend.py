"""The Ascend plugin's own cost: parsing npu-smi tables of 8 and 16 NPUs, and one DCMI reading of 16 chips.

Parsing: the tables are the simulator's (byte for byte the real 910B and 310P Duo layouts, with one process
per chip). Baseline in the same run: splitting the same text into lines and cells (``line.split("|")``), the
floor of any parser that reads by cells. The ratio says what our tokens, checks and warnings cost on top.

DCMI: the real binding reads 16 chips from the libdcmi.so test double (compiled here with gcc). Baseline in
the same run: the same number of bare ctypes calls into the same library (counted by the double), so
``(reading - bare calls) / 16`` is our overhead per chip: argument structs, unit conversion, the worker
thread hand-off. The double answers at once; a real driver's sampling windows come on top of both.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile

import _util
from _util import median_seconds, report

ASCEND = os.path.join(_util.ROOT, "plugins", "ascend")
sys.path[:0] = [ASCEND, os.path.join(ASCEND, "tests")]

from npuagent_ascend import npusmi  # noqa: E402
from npuagent_ascend.dcmi import SIGNATURES, Dcmi  # noqa: E402

SIM = [sys.executable, "-m", "npuagent_ascend.sim"]


def table(layout: str, chips: int, per_npu: int) -> str:
    """``npu-smi info`` of ``chips`` chips with one process each, printed by the simulator."""
    lines = [f'layout = "{layout}"', f"chips_per_npu = {per_npu}", 'temperature = "45"', 'aicore = "60"',
             "[devices]", f"count = {chips}"]
    for i in range(chips):
        lines += ["[[processes]]", f"device = {i}", f"pid = {100000 + i}", 'name = "python3"', 'memory = "20480"']
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        env = dict(os.environ, NPUAGENT_SIM_START="0", NPUAGENT_SIM_TIME="60",
                   PYTHONPATH=os.pathsep.join([_util.ROOT, ASCEND]))
        return subprocess.run([*SIM, "--scenario", f.name, "info"], env=env, check=True, capture_output=True,
                              text=True).stdout
    finally:
        os.unlink(f.name)


def split_cells(text: str) -> int:
    return sum(len(line.split("|")) for line in text.splitlines())


def bench_parse() -> None:
    rows = []
    for layout, chips, per_npu in (("910B", 8, 1), ("910B", 16, 1), ("310P", 16, 2)):
        text = table(layout, chips, per_npu)
        snap = npusmi.parse_info(text)
        assert len(snap.chips) == chips and len(snap.processes) == chips and not snap.warnings, snap.warnings
        ours = median_seconds(lambda t=text: npusmi.parse_info(t), repeat=200)
        floor = median_seconds(lambda t=text: split_cells(t), repeat=200)
        rows.append({"table": f"{layout} {chips} chips" + (" (Duo cards)" if per_npu == 2 else ""),
                     "lines": len(text.splitlines()), "parse_us": round(ours * 1e6, 1),
                     "split_cells_us": round(floor * 1e6, 1), "ratio": round(ours / floor, 1)})
    report("npu-smi info: parse time (baseline: splitting the same text into cells)", rows)


def bench_dcmi() -> None:
    from libdcmi_double import SOURCE, script_910b

    gcc = shutil.which("gcc")
    if gcc is None:
        print("\n== DCMI: skipped (gcc is not installed)")
        return
    chips = 16
    tmp = tempfile.mkdtemp()
    lib = os.path.join(tmp, "libdcmi.so")
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-pthread", "-o", lib, SOURCE], check=True)
    script = os.path.join(tmp, "script.txt")
    with open(script, "w") as f:
        f.write(script_910b(range(chips)))
    os.environ["DCMI_DOUBLE_SCRIPT"] = script
    c = ctypes.CDLL(lib)
    c.dcmi_double_calls.argtypes = [ctypes.c_char_p]
    reader = Dcmi(lib)
    try:
        snap = reader.read(10)
        assert len(snap.chips) == chips and not snap.warnings, snap.warnings
        def counted() -> int:
            return sum(c.dcmi_double_calls(name.encode()) for name in SIGNATURES)

        before = counted()
        reader.read(10)
        calls = counted() - before
        ours = median_seconds(lambda: reader.read(10), repeat=100)
    finally:
        reader.close()
    temperature = c.dcmi_get_device_temperature
    temperature.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    value = ctypes.c_int()

    def bare() -> None:
        for _ in range(calls):
            temperature(0, 0, ctypes.byref(value))

    floor = median_seconds(bare, repeat=100)
    report("DCMI: one reading of 16 chips from the test double (baseline: the same number of bare ctypes calls)",
           [{"chips": chips, "calls": calls, "reading_us": round(ours * 1e6), "bare_calls_us": round(floor * 1e6),
             "ratio": round(ours / floor, 1), "overhead_per_chip_us": round((ours - floor) / chips * 1e6, 1)}])
    shutil.rmtree(tmp)


if __name__ == "__main__":
    bench_parse()
    bench_dcmi()
