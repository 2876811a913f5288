"""The npu-smi simulator: real-format output, read by the real parser, over simulated time.

Every test runs the simulator as the collector does, in a subprocess (``python -m
npuagent_ascend.sim``), with ``NPUAGENT_SIM_START`` / ``NPUAGENT_SIM_TIME`` choosing the moment.
Two kinds of check:

* the output *is* npu-smi's: scenarios that replay real captures reproduce them byte for byte,
  and at any moment every border, header and version line has the shape of the same line in a
  real capture of that layout (910B: 910B3-info-1, 910B4-info-1; 310P: 310P3-info-2, 310P3-duo-info-1);
* the parser (:mod:`npuagent_ascend.npusmi`) reads from it the values the scenario holds, for
  every device, at several moments.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import pytest
from npuagent_ascend import faults, sim
from npuagent_ascend.model import MIB, FaultTracker, samples

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(PLUGIN))
SCENARIOS = os.path.join(PLUGIN, "npuagent_ascend", "scenarios")
FIXTURES = os.path.normpath(os.path.join(ROOT, "..", "shared", "fixtures", "npu-smi"))
T0 = 1_700_000_000.0

needs_fixtures = pytest.mark.skipif(not os.path.isdir(FIXTURES), reason="../shared/fixtures/npu-smi is absent")


@pytest.fixture
def npusmi() -> Any:
    """The npu-smi parser another module owns; the round-trip tests need it."""
    return pytest.importorskip("npuagent_ascend.npusmi")


def scenario(name: str) -> str:
    return os.path.join(SCENARIOS, f"{name}.toml")


def sim_env(at: Optional[float] = None, start: Optional[float] = T0) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, PLUGIN, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("NPUAGENT_SIM_START", None)
    env.pop("NPUAGENT_SIM_TIME", None)
    if start is not None:
        env["NPUAGENT_SIM_START"] = repr(start)
    if at is not None:
        env["NPUAGENT_SIM_TIME"] = repr((start or 0.0) + at)
    return env


SIM = [sys.executable, "-m", "npuagent_ascend.sim"]


def run(path: str, *args: str, at: Optional[float] = 0.0, start: Optional[float] = T0,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SIM, "--scenario", path, *args], env=env or sim_env(at, start), capture_output=True,
                          text=True, timeout=60)


def info(path: str, at: float, *args: str) -> str:
    done = run(path, "info", *args, at=at)
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stderr == ""
    return done.stdout


def write(tmp_path: Any, text: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the shape of the lines ---------------------------------------------------------------------------------


def kinds(text: str) -> List[tuple]:
    """Each line of an ``npu-smi info`` table with what it is: border, header, version, row A/B, process row."""
    out = []
    previous = ""
    in_processes = False
    for line in text.splitlines():
        if line.startswith("+"):
            kind = "equals" if "=" in line else ("columns" if "+" in line[1:-1] else "top")
        elif "npu-smi" in line:
            kind = "version"
        elif "Process id" in line:
            kind, in_processes = "process_header", True
        elif "Health" in line and "Name" in line:
            kind = "header_1"
        elif "Bus-Id" in line:
            kind = "header_2"
        elif "No running processes" in line:
            kind = "no_process"
        elif in_processes:
            kind = "process_row"
        elif line.split("|")[2].strip() in sim.HEALTH_WORDS:
            kind = "row_a"
        else:
            kind = "row_b" if previous == "row_a" else "other"
        out.append((kind, line))
        previous = kind
    return out


FIXED = ("top", "columns", "equals", "header_1", "header_2", "process_header")


def shape(line: str) -> tuple:
    """Length, where the column bars are, and where each value starts (npu-smi pads values to fixed widths).

    An empty cell (a process name npu-smi could not resolve) counts as a value at the cell's start.
    """
    starts = [m.start() for m in re.finditer(r"[^\s|/+]+", line)]
    starts += [m.start() + 2 for m in re.finditer(r"\|(?= +\|)", line)]
    return len(line), [i for i, ch in enumerate(line) if ch in "|+"], sorted(starts)


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def assert_same_shapes(output: str, references: Sequence[str]) -> None:
    """Every line of the output has the shape of a line of the same kind in one of the captures of its layout.

    One capture rarely shows every kind of line (a card with no process running has no process rows), so the
    kinds are pooled over the captures of the layout.
    """
    ref: Dict[str, List[str]] = {}
    for reference in references:
        for kind, line in kinds(reference):
            ref.setdefault(kind, []).append(line)
    seen = set()
    for kind, line in kinds(output):
        if kind == "process_row" and kind not in ref:
            # no capture of this layout shows a running process (the 310P ones all say "No running processes
            # found"): the row then keeps to the length and the bars of the layout's own process header
            assert shape(line)[:2] == shape(ref["process_header"][0])[:2], line
            seen.add(kind)
            continue
        assert kind in ref, f"a {kind} line that no capture has: {line!r}"
        seen.add(kind)
        if kind in FIXED:
            assert line in ref[kind]
        elif kind == "version":  # "| npu-smi %-24s Version: %-52s |": versions differ in length, columns do not
            assert [len(line), line.index("Version:"), shape(line)[1]] in [
                [len(r), r.index("Version:"), shape(r)[1]] for r in ref[kind]]
        else:
            assert shape(line) in [shape(r) for r in ref[kind]], f"{kind}:\n{line}\n{ref[kind][0]}"
    assert set(FIXED) | {"version", "row_a", "row_b"} <= seen


# -- byte for byte: scenarios that replay real captures ------------------------------------------------------


def replica(snap: Any, layout: str, chips_per_npu: int) -> str:
    """A scenario that holds exactly what a parsed capture shows."""
    lines = [f'layout = "{layout}"', f'name = "{snap.chips[0].name}"', f'version = "{snap.tool_version}"',
             f'driver_version = "{snap.driver_version}"', f"chips_per_npu = {chips_per_npu}",
             f"npu_ids = {sorted({c.npu_id for c in snap.chips})}", "[devices]", f"count = {len(snap.chips)}"]
    for i, c in enumerate(snap.chips):
        used, total = ((c.hbm_used_bytes, c.hbm_total_bytes) if layout == "910B"
                       else (c.ddr_used_bytes, c.ddr_total_bytes))
        lines += [f"[devices.{i}]", f'temperature = "{c.temperature_celsius:g}"',
                  f'aicore = "{c.aicore_utilization_percent:g}"', f'hbm_used = "{used / MIB:g}"',
                  f'hbm_total = "{total / MIB:g}"', f'health = "{c.health}"', f'bus_id = "{c.bus_id}"']
        if c.power_watts is not None:
            lines.append(f'power = "{c.power_watts}"')
    index = {(c.npu_id, c.chip_id): i for i, c in enumerate(snap.chips)}
    for p in snap.processes:
        lines += ["[[processes]]", f"device = {index[(p.npu_id, p.chip_id)]}", f"pid = {p.pid}",
                  f"name = {json.dumps(p.name)}", f'memory = "{p.memory_bytes / MIB:g}"']
    return "\n".join(lines) + "\n"


@needs_fixtures
@pytest.mark.parametrize(("capture", "layout", "chips", "complete"), [
    ("910B3-info-1.txt", "910B", 1, True),    # empty process names (container), 59985/ 65536
    ("910B3-info-2.txt", "910B", 1, True),    # 139.7 W, a 7-digit pid
    ("910B4-info-1.txt", "910B", 1, True),    # python3.9 on NPU 0, 32 GiB parts
    ("310P3-info-1.txt", "310P", 1, True),    # NPU 6, Power NA
    ("310P3-info-2.txt", "310P", 1, True),    # NPU 24
    ("310P3-duo-info-1.txt", "310P", 2, True),  # two chips on NPU 1792, the +---+ between them
    ("310P3-info-3.txt", "310P", 1, False),   # NPUs 4 and 5; the paste stops before the process table
])
def test_a_scenario_replaying_a_capture_prints_it_byte_for_byte(npusmi: Any, tmp_path: Any, capture: str,
                                                                layout: str, chips: int, complete: bool) -> None:
    text = fixture(capture)
    path = write(tmp_path, replica(npusmi.parse_info(text), layout, chips))
    out = info(path, 600)
    if complete:
        assert out == text
    else:
        assert out.startswith(text)


@needs_fixtures
@pytest.mark.parametrize(("name", "captures"), [
    ("overheat", ["910B3-info-1.txt", "910B4-info-1.txt"]),
    ("memory-leak", ["910B4-info-1.txt"]),
    ("fragmentation", ["910B4-info-1.txt"]),
    ("inference-310p", ["310P3-duo-info-1.txt", "310P3-info-2.txt"]),
])
@pytest.mark.parametrize("at", [0, 290, 3600])
def test_every_line_has_the_shape_of_the_real_layout(name: str, captures: Sequence[str], at: float) -> None:
    out = info(scenario(name), at)
    assert_same_shapes(out, [fixture(capture) for capture in captures])


# -- the parser reads what the scenario holds -----------------------------------------------------------------


def expected(name: str, at: float) -> sim.State:
    return sim.state_at(sim.load_scenario(scenario(name)), at)


def assert_parsed(snap: Any, state: sim.State, layout: str) -> None:
    assert snap.warnings == []
    assert [(c.npu_id, c.chip_id) for c in snap.chips] == [(c.npu_id, c.chip_id) for c in state.chips]
    for got, want in zip(snap.chips, state.chips):
        assert got.health == want.health
        assert got.temperature_celsius == want.temperature
        assert got.aicore_utilization_percent == want.aicore
        assert got.bus_id == "{:04X}:{:02X}:{:02X}.{:X}".format(*want.bus)
        if layout == "910B":
            assert got.power_watts == pytest.approx(want.power)
            assert (got.hbm_used_bytes, got.hbm_total_bytes) == (want.hbm_used * MIB, want.hbm_total * MIB)
        else:
            assert got.power_watts is None  # "NA", as 310P prints from npu-smi 23.x on
            assert got.device_id == want.index
            assert (got.ddr_used_bytes, got.ddr_total_bytes) == (want.hbm_used * MIB, want.hbm_total * MIB)
    assert [(p.npu_id, p.chip_id, p.pid, p.name, p.memory_bytes) for p in snap.processes] == [
        (p.npu_id, p.chip_id, p.pid, p.name, p.memory * MIB) for p in state.processes]


@pytest.mark.parametrize(("name", "layout"), [
    ("overheat", "910B"), ("memory-leak", "910B"), ("fragmentation", "910B"), ("device-alarm", "910B"),
    ("inference-310p", "310P"),
])
@pytest.mark.parametrize("at", [-30, 0, 100, 290, 705, 7200])
def test_the_parser_reads_the_scenarios_values(npusmi: Any, name: str, layout: str, at: float) -> None:
    assert_parsed(npusmi.parse_info(info(scenario(name), at)), expected(name, at), layout)


@pytest.mark.parametrize(("at", "temperature", "freq"), [
    (0, 48, 1800), (239, 78, 1800), (240, 80, 1800), (285, 86, 1800), (300, 88, 1800), (315, 88, 1300),
    (600, 88, 1300), (615, 86, 1800), (705, 74, 1800), (735, 70, 1800), (86400, 70, 1800),
])
def test_overheat_climbs_past_80_and_85_and_falls_below_75(npusmi: Any, at: float, temperature: int,
                                                           freq: int) -> None:
    snap = npusmi.parse_info(info(scenario("overheat"), at))
    assert [c.temperature_celsius for c in snap.chips] == [45] * 3 + [temperature] + [45] * 4
    chip = snap.chips[3]
    for block in npusmi.parse_kv_blocks(info(scenario("overheat"), at, "-t", "common", "-i", "3"))[1:2]:
        assert npusmi.apply_kv(chip, "common", block) == []
    assert chip.aicore_frequency_mhz == freq


@pytest.mark.parametrize(("at", "held"), [(0, 2048), (15, 2560), (150, 7168), (1800, 63488), (1860, 65536),
                                          (86400, 65536)])
def test_memory_leak_grows_linearly_toward_the_total(npusmi: Any, at: float, held: int) -> None:
    snap = npusmi.parse_info(info(scenario("memory-leak"), at))
    leak = snap.processes[0]
    assert (leak.npu_id, leak.pid, leak.name, leak.memory_bytes) == (0, 48211, "python3", held * MIB)
    assert snap.chips[0].hbm_used_bytes == min(3400 + held, 65536) * MIB
    assert snap.chips[0].hbm_total_bytes == 65536 * MIB
    assert snap.chips[1].hbm_used_bytes == (3400 + 18432) * MIB  # the steady neighbour


@pytest.mark.parametrize("at", [0, 45, 600, 86400])
def test_fragmentation_keeps_used_over_80_percent(npusmi: Any, at: float) -> None:
    snap = npusmi.parse_info(info(scenario("fragmentation"), at))
    ratios = [c.hbm_used_bytes / c.hbm_total_bytes for c in snap.chips]
    assert all(r > 0.9 for r in ratios[:4]) and 0.8 < ratios[4] < 0.95
    assert ratios[5] < 0.5 and ratios[6] == ratios[7] == 3400 / 65536
    held = {p.npu_id: p.memory_bytes for p in snap.processes}
    assert all(held[n] / snap.chips[n].hbm_used_bytes > 0.9 for n in range(5))  # the processes hold it
    assert [p.name for p in snap.processes if p.npu_id == 5] == [""]  # a leftover from another container


@pytest.mark.parametrize(("at", "health", "codes", "ecc"), [
    (0, "OK", [], 0), (119, "OK", [], 0), (120, "Warning", [0x80E20207], 0),
    (240, "Alarm", [0x80E20207, 0x80E01801], 1), (479, "Alarm", [0x80E20207, 0x80E01801], 1),
    (480, "OK", [], 1), (86400, "OK", [], 1),
])
def test_device_alarm_goes_warning_then_alarm_with_a_fault_code_then_ok(npusmi: Any, at: float, health: str,
                                                                        codes: List[int], ecc: int) -> None:
    snap = npusmi.parse_info(info(scenario("device-alarm"), at))
    assert [c.health for c in snap.chips] == ["OK", "OK", health] + ["OK"] * 5
    chip = snap.chips[2]
    assert npusmi.apply_kv(chip, "health", npusmi.parse_kv(info(scenario("device-alarm"), at, "-t", "health",
                                                                "-i", "2", "-c", "0"))) == []
    assert (chip.health, chip.fault_codes) == (health, codes)
    ecc_blocks = npusmi.parse_kv_blocks(info(scenario("device-alarm"), at, "-t", "ecc", "-i", "2"))
    assert npusmi.apply_kv(chip, "ecc", ecc_blocks[1]) == []
    assert chip.ecc_errors["hbm_double_bit"] == ecc


def test_health_without_a_chip_gives_health_per_chip_and_the_mcu(npusmi: Any) -> None:
    out = info(scenario("device-alarm"), 300, "-t", "health", "-i", "2")
    assert npusmi.parse_kv_blocks(out) == [{"NPU ID": "2", "Chip Count": "1"}, {"Chip ID": "0", "Health": "Alarm"},
                                           {"Health": "OK", "Chip Name": "MCU"}]


def test_the_health_answer_is_printed_as_npu_smi_prints_it() -> None:
    out = info(scenario("device-alarm"), 300, "-t", "health", "-i", "2", "-c", "0")
    # print_diagnosis_info: " %04X" per code; each information line after the first is "\n\t%-30s : %s"
    assert out == ("\tHealth Status                  : Alarm\n"
                   "\tError Code                     : 80E20207 80E01801\n"
                   "\tError Information              : 2162295303\n"
                   "\n"
                   "\t                               : 2162169857\n")
    assert info(scenario("device-alarm"), 0, "-t", "health", "-i", "2", "-c", "0") == (
        "\tHealth Status                  : OK\n\tError Code                     : NA\n"
        "\tError Information              : NA\n")


@needs_fixtures
@pytest.mark.parametrize(("args", "capture"), [
    (["-t", "usages", "-i", "0"], "910B-usages-1.txt"),
    (["-t", "temp", "-i", "0"], "910B-temp-1.txt"),
    (["-t", "power", "-i", "0"], "910B-power-1.txt"),
    (["-m"], "910B3-info_m-1.txt"),
])
def test_key_value_forms_have_the_keys_of_the_real_ones(args: List[str], capture: str) -> None:
    out = info(scenario("overheat"), 0, *args)
    keys = [re.split(r"\s{2,}| : ", line.strip())[0] for line in out.splitlines()]
    want = [re.split(r"\s{2,}| : ", line.strip())[0] for line in fixture(capture).splitlines()]
    if args == ["-m"]:
        assert [ln.split()[:3] for ln in out.splitlines()[:5]] == [ln.split()[:3] for ln in
                                                                    fixture(capture).splitlines()]
        assert out.splitlines()[:5] == fixture(capture).splitlines()  # tabs and trailing spaces included
    else:
        assert keys == want
        # "\t%-30s : %s": the same columns as the capture (whose tab became 8 spaces)
        assert [ln.replace("\t", " " * 8).index(":") for ln in out.splitlines() if ln] == [
            ln.index(":") for ln in fixture(capture).splitlines() if ln]


def test_the_310p_forms(npusmi: Any) -> None:
    path = scenario("inference-310p")
    assert npusmi.parse_mapping(info(path, 0, "-m")) == {(1792, 0): 0, (1792, 1): 1, (1793, 0): 2, (1793, 1): 3}
    blocks = npusmi.parse_kv_blocks(info(path, 600, "-t", "common", "-i", "1793"))
    assert [b.get("Chip ID") for b in blocks] == [None, "0", "1", None]
    assert blocks[2]["Temperature(C)"] == "79" and blocks[3] == {
        "Chip Name": "mcu", "Temperature(C)": "38", "NPU Real-time Power(W)": "45.2"}
    usages = npusmi.parse_kv_blocks(info(path, 0, "-t", "usages", "-i", "1792"))
    assert usages[1]["DDR Capacity(MB)"] == "44280" and usages[1]["DDR Usage Rate(%)"] == str(
        (1840 + 12288) * 100 // 44280) and "Vectorcore Usage Rate(%)" in usages[1]
    done = run(path, "info", "-t", "power", "-i", "1792")
    assert (done.returncode, done.stdout) == (1, "This device does not support querying power info.\n")


# -- the collector's path, end to end ---------------------------------------------------------------------------


def collect(npusmi: Any, monkeypatch: Any, path: str, at: float, forms: Sequence[str]) -> Any:
    from npuagent.context import PluginContext

    for key, value in sim_env(at).items():
        monkeypatch.setenv(key, value)
    ctx = PluginContext("npu", "npu", {}, timeout=60.0)
    return npusmi.read(ctx, [*SIM, "--scenario", path], forms=forms, mapping=True)


def test_the_collector_reads_the_simulator_as_it_reads_npu_smi(npusmi: Any, monkeypatch: Any) -> None:
    snap = collect(npusmi, monkeypatch, scenario("device-alarm"), 300, ("health", "usages", "common"))
    assert snap.warnings == []
    assert [c.device_id for c in snap.chips] == list(range(8))
    chip = snap.chips[2]
    assert (chip.health, chip.fault_codes, chip.aicore_frequency_mhz) == ("Alarm", [0x80E20207, 0x80E01801], 1800)
    active = {(s.labels["device_id"], s.labels["code"], s.labels["level"])
              for s in samples(snap, faults.level) if s.name == "npu_fault_active"}
    assert active == {("2", "0x80e20207", "SubHealthFault"), ("2", "0x80e01801", "RestartBusiness")}
    events = FaultTracker().events(snap, faults.level, faults.describe)
    assert [e.message.split(":")[0] for e in events] == ["0x80E01801", "0x80E20207"]


def test_the_collector_on_a_310p(npusmi: Any, monkeypatch: Any) -> None:
    snap = collect(npusmi, monkeypatch, scenario("inference-310p"), 600, ("common", "power"))
    assert [c.device_id for c in snap.chips] == [0, 1, 2, 3]
    assert snap.chips[0].power_watts == 45.2  # the card's power, from the MCU block of -t common
    assert any("power" in w for w in snap.warnings)  # -t power: "does not support", said once


# -- time ---------------------------------------------------------------------------------------------------------


def temperature_of_npu_3(out: str) -> int:
    row = next(line for line in out.splitlines() if line.startswith("| 3 "))
    return int(row.split("|")[3].split()[1])


def test_the_clock_starts_at_the_files_mtime(tmp_path: Any) -> None:
    with open(scenario("overheat"), encoding="utf-8") as f:
        path = write(tmp_path, f.read())
    os.utime(path, (T0, T0))
    done = run(path, "info", env=sim_env(at=240, start=None) | {"NPUAGENT_SIM_TIME": repr(T0 + 240)})
    assert temperature_of_npu_3(done.stdout) == 80
    os.utime(path, (time.time() - 400, time.time() - 400))  # 6:40 ago: held at 88 from 5:00 to 10:00
    done = run(path, "info", env=sim_env(at=None, start=None))
    assert temperature_of_npu_3(done.stdout) == 88


def test_start_comes_from_the_option_then_the_environment() -> None:
    env = sim_env(at=240)  # NPUAGENT_SIM_START = T0, now = T0 + 240
    assert temperature_of_npu_3(run(scenario("overheat"), "info", env=env).stdout) == 80
    done = run(scenario("overheat"), "--start", repr(T0 + 240), "info", env=env)  # the option wins
    assert temperature_of_npu_3(done.stdout) == 48
    done = run(scenario("overheat"), f"--start={T0 + 60}", "info", env=env)
    assert temperature_of_npu_3(done.stdout) == 72


def test_a_bad_clock_is_a_clear_error() -> None:
    done = run(scenario("overheat"), "info", env=sim_env(at=0) | {"NPUAGENT_SIM_TIME": "soon"})
    assert done.returncode == 2 and "NPUAGENT_SIM_TIME: expected epoch seconds, got 'soon'" in done.stderr


# -- hanging ------------------------------------------------------------------------------------------------------


def assert_hangs(argv: List[str], env: Dict[str, str]) -> None:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.stdout is not None and proc.stdout.read() == b""
    proc.stdout.close()
    proc.stderr.close()  # type: ignore[union-attr]


def test_hang_answers_then_hangs_forever() -> None:
    assert temperature_of_npu_3(info(scenario("hang"), 119)) == 45
    assert_hangs([*SIM, "--scenario", scenario("hang"), "info"], sim_env(at=120))
    assert_hangs([*SIM, "--scenario", scenario("hang"), "info", "-m"], sim_env(at=3600))


def test_hang_true_hangs_from_the_start(tmp_path: Any) -> None:
    path = write(tmp_path, "devices = 1\nhang = true\n")
    assert_hangs([*SIM, "--scenario", path, "info"], sim_env(at=0))


def test_the_collector_times_out_on_a_hanging_npu_smi(monkeypatch: Any) -> None:
    from npuagent.commands import CommandTimeout
    from npuagent.context import PluginContext

    for key, value in sim_env(at=300).items():
        monkeypatch.setenv(key, value)
    ctx = PluginContext("npu", "npu", {}, timeout=1.0)
    began = time.monotonic()
    with pytest.raises(CommandTimeout):
        ctx.run([*SIM, "--scenario", scenario("hang"), "info"])
    assert time.monotonic() - began < 10


# -- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ('layout = "910B"\ndevices =\n', r":2: TOML syntax error: "),
    ('devices = 8\n[devices.3]\ntemperature = "1"\n', r":2: TOML syntax error: .*count = N. under \[devices\]"),
    ('devices = 2\ntemprature = "40"\n', r':2: temprature: unknown key \(did you mean "temperature"\?\)'),
    ('devices = 2\n\ntemperature = "40+x"\n', r':3: temperature: value 1 "40\+x": expected a number'),
    ('devices = 2\ntemperature = "40 _ 41"\n', r":2: temperature: .*only for processes"),
    ('layout = "910C"\ndevices = 2\n', r":1: layout: expected one of '910B', '310P', got '910C'"),
    ('step = "15"\ndevices = 2\n', r':1: step: expected a duration such as "500ms"'),
    ('devices = 0\n', r":1: devices: expected an integer of at least 1, got 0"),
    ('layout = "910B"\n', r':1: missing key "devices"'),
    ('[devices]\ncount = 2\n[devices.5]\naicore = "1"\n', r":3: devices.5: expected a device index from 0 to 1"),
    ('[devices]\ncount = 2\n[devices.1]\nhelth = "OK"\n', r':4: devices.1.helth: unknown key \(did you mean "health"'),
    ('devices = 2\nhealth = "OK Fine"\n', r":2: health: expected a health word \(OK, Warning, Alarm, Critical"),
    ('devices = 2\nhealth = [{at = "1m", valeu = "OK"}]\n', r":2: health\[0\]\.valeu: unknown key"),
    ('devices = 2\nhealth = [{at = "2m", value = "OK"}, {at = "1m", value = "Alarm"}]\n',
     r':2: health: "at" times must be in order'),
    ('devices = 2\nfault_codes = ["80E0180G"]\n', r":2: fault_codes\[0\]: expected a fault code in hex"),
    ('devices = 2\n[[processes]]\ndevice = 9\npid = 1\nmemory = "1"\n',
     r":3: processes\[0\]\.device: no device 9: the scenario has devices 0 to 1"),
    ('devices = 2\n[[processes]]\ndevice = 0\nmemory = "1"\n', r':2: processes\[0\]: missing key "pid"'),
    ('layout = "910B"\ndevices = 2\nchips_per_npu = 2\n', r":3: chips_per_npu: the 910B layout has one chip per NPU"),
    ('layout = "310P"\ndevices = 3\nchips_per_npu = 2\n', r":2: devices: 3 chips do not fill NPUs of 2 chips"),
    ('layout = "310P"\ndevices = 2\nnpu_ids = [4]\n', r":3: npu_ids: expected a list of 2 NPU numbers"),
    ('devices = 1\nbus_id = "C1:00.0"\n', r':2: bus_id: expected a PCIe address such as "0000:C1:00.0"'),
    ('devices = 1\nhang_after = 5\n', r':2: hang_after: expected a duration string .*got 5'),
    (b"devices = 1\n# \xff\n", r":2: not valid UTF-8"),
])
def test_a_bad_scenario_says_where_and_exits_2(tmp_path: Any, text: Any, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    done = run(str(path), "info")
    assert done.returncode == 2
    assert done.stdout == ""
    assert re.search(r"^npuagent-npu-sim: " + re.escape(str(path)) + message, done.stderr), done.stderr


def test_a_missing_scenario_or_option(tmp_path: Any) -> None:
    done = run(str(tmp_path / "nope.toml"), "info")
    assert done.returncode == 2 and "nope.toml: cannot read the scenario: No such file or directory" in done.stderr
    done = subprocess.run([*SIM, "info"], env=sim_env(0), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--scenario FILE is required" in done.stderr and "usage:" in done.stderr
    done = subprocess.run([*SIM, "--scenario"], env=sim_env(0), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--scenario needs a value" in done.stderr
    done = subprocess.run([*SIM, "--speed", "2", "info"], env=sim_env(0), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown option --speed" in done.stderr


@pytest.mark.parametrize(("args", "first_line"), [
    (["foo"], "Command or option is not found."),
    (["info", "watch"], "Command or option is not found."),
    (["info", "-t", "usages", "-i", "0", "-x", "1"], "Command or option is not found."),
    (["info", "-t", "bogus", "-i", "0"], "Error parameter of -t"),
    (["info", "-i", "0"], "Error parameter of -t"),
    (["info", "-t"], "Error parameter of -t"),
    (["info", "-t", "usages"], "Invalid card id."),
    (["info", "-t", "usages", "-i", "42"], "Invalid card id."),
    (["info", "-t", "usages", "-i", "zero"], "Invalid card id."),
    (["info", "-t", "usages", "-i", "0", "-c", "1"], "Invalid chip id."),
    (["info", "-t", "usages", "-i", "0", "-c"], "Invalid chip id."),
    (["info", "-t", "board", "-i", "0"], "This device does not support querying board info."),
])
def test_a_bad_command_line_gets_npu_smis_answer(args: List[str], first_line: str) -> None:
    done = run(scenario("overheat"), *args)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == first_line
    assert done.stderr == ""


def test_help_and_version() -> None:
    done = run(scenario("overheat"), "info", "-h")
    assert done.returncode == 0 and done.stdout.startswith("Usage: npu-smi info <watch|proc|-h|-m|-l|-t type>")
    assert run(scenario("overheat"), "-v").stdout == "npu-smi version: 25.2.0\n"
    done = run(scenario("overheat"))
    assert done.returncode == 1 and done.stdout.startswith("Usage: npu-smi <Command|-h|-v> [Options...]")


def test_info_l_lists_the_npus(npusmi: Any) -> None:
    assert npusmi.parse_list(info(scenario("inference-310p"), 0, "-l")) == {1792: 2, 1793: 2}
    assert npusmi.parse_list(info(scenario("overheat"), 0, "-l")) == {n: 1 for n in range(8)}


# -- the shipped scenarios --------------------------------------------------------------------------------------


SHIPPED = sorted(glob.glob(os.path.join(SCENARIOS, "*.toml")))


def test_the_shipped_scenarios_are_those_documented() -> None:
    names = {os.path.basename(p)[:-5] for p in SHIPPED}
    assert {"overheat", "memory-leak", "fragmentation", "device-alarm", "hang"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(p))
def test_each_shipped_scenario_loads_and_is_commented(path: str) -> None:
    s = sim.load_scenario(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("#") and len(re.findall(r"^#", text, re.M)) >= 5
    for at in (0, 60, 600, 86400):
        text, status = sim.render(s, at, ["info"])
        if not s.hang:
            assert status == 0 and text.count("\n") > 10


def test_main_in_process(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("NPUAGENT_SIM_START", repr(T0))
    monkeypatch.setenv("NPUAGENT_SIM_TIME", repr(T0 + 300))
    assert sim.main(["--scenario", scenario("overheat"), "info", "-t", "temp", "-i", "3", "-c", "0"]) == 0
    assert capsys.readouterr().out == "\tNPU Temperature (C)            : 88\n"
