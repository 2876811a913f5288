"""The host collector against the kernel's own files, real processes, and recorded or fake trees.

Every collector is built the way the agent builds it: through the registered CollectorType, its options
validated by the same function the configuration uses.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterator, List, Optional

import psutil
import pytest

from npuagent.builtin import host
from npuagent.context import PluginContext
from npuagent.model import METRIC_TYPES, Sample
from npuagent.options import validate_table

DATA = Path(__file__).parent / "data" / "host"
SLEEP = shutil.which("sleep") or "/bin/sleep"
LOGGER = "npuagent.host.host"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def collector_type() -> Any:
    return host.npuagent_collector_types()[0]


def build(**raw: Any) -> host.HostCollector:
    """A collector as the agent builds one from ``[collectors.host]`` holding ``raw``."""
    ct = collector_type()
    values, errors = validate_table(raw, ct.options)
    assert not errors, errors
    return ct.factory(PluginContext(name="host", type="host", options=values))


@pytest.fixture
def make() -> Iterator[Callable[..., host.HostCollector]]:
    made: List[host.HostCollector] = []

    def _make(**raw: Any) -> host.HostCollector:
        c = build(**raw)
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start real processes; whatever is still running at the end is killed and reaped."""
    procs: List[subprocess.Popen] = []

    def _spawn(argv: List[str], executable: Optional[str] = None) -> subprocess.Popen:
        p = subprocess.Popen(argv, executable=executable, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()  # reaped: no zombie left behind to look alive


def find(samples: List[Sample], name: str, **labels: str) -> List[Sample]:
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(samples: List[Sample], name: str, **labels: str) -> float:
    found = find(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0].value


def unique_name(tag: str) -> str:
    """A process name nobody else on the machine has (at most 15 characters: the kernel's comm length)."""
    return f"npa{tag}{os.getpid()}"[:15]


def sleeper_link(tmp_path: Path, name: str) -> str:
    """A symlink to sleep: the process exec'd through it is called ``name`` (comm and argv[0])."""
    link = tmp_path / name
    link.symlink_to(SLEEP)
    return str(link)


def proc_mounts() -> List[List[str]]:
    with open("/proc/mounts", "rb") as f:
        return [[host._unescape(x).decode("utf-8", "replace") for x in line.split()[:4]]
                for line in f.read().splitlines() if len(line.split()) >= 4]


def reportable_mount() -> List[str]:
    """A mount of this machine the default regexes keep, as the table has it on top (the last entry)."""
    mp_re, fs_re = re.compile(host.MOUNT_POINTS_EXCLUDE), re.compile(host.FS_TYPES_EXCLUDE)
    last: Dict[str, List[str]] = {}
    for device, point, fstype, opts in proc_mounts():
        last[point] = [device, point, fstype, opts]
    for device, point, fstype, opts in last.values():
        if not mp_re.search(point) and not fs_re.search(fstype):
            try:
                os.statvfs(point)
            except OSError:
                continue
            return [device, point, fstype, opts]
    pytest.fail("no mount on this machine survives node_exporter's default exclusions")


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def test_registered_type_is_host_with_its_schedule() -> None:
    ct = collector_type()
    assert (ct.name, ct.interval, ct.timeout, ct.enabled_by_default) == ("host", 10.0, 5.0, True)
    assert {o.name for o in ct.options} >= {"mount_points_exclude", "fs_types_exclude", "disk_devices_exclude",
                                             "network_devices_exclude", "services", "cgroup_root", "systemctl"}


def test_every_series_collected_is_declared_with_type_and_help(make, tmp_path, spawn) -> None:
    name = unique_name("d")
    spawn([sleeper_link(tmp_path, name), "30"])
    c = make(services=[{"name": "s", "process": name}])
    c.collect()
    burn_cpu()
    samples = c.collect()
    declared = {m.name: m for m in collector_type().metrics}
    emitted = {s.name for s in samples}
    assert "host_cpu_usage_percent" in emitted and "service_up" in emitted
    assert emitted <= set(declared), emitted - set(declared)
    for m in declared.values():
        assert m.type in METRIC_TYPES and m.help
        assert (m.type == "counter") == m.name.endswith("_total"), m.name


# ---------------------------------------------------------------------------
# CPU, load, memory against the kernel
# ---------------------------------------------------------------------------


def test_memtotal_is_proc_meminfo_times_1024(make) -> None:
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert value(make().collect(), "node_memory_MemTotal_bytes") == kb * 1024


def test_memory_series_and_usage_percent(make) -> None:
    samples = make().collect()
    for name in host.MEMINFO.values():
        assert value(samples, name) >= 0
    total, available = value(samples, "node_memory_MemTotal_bytes"), value(samples, "node_memory_MemAvailable_bytes")
    assert 0 < available <= total
    assert value(samples, "host_memory_usage_percent") == pytest.approx((total - available) / total * 100)


def test_cached_is_the_kernels_cached_not_psutils(make, tmp_path) -> None:
    """psutil adds SReclaimable to Cached; node_exporter's series (and dashboards) do not."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n"
                       "Buffers:          10 kB\nCached:          300 kB\nSwapCached:        0 kB\n"
                       "SwapTotal:       200 kB\nSwapFree:        150 kB\nSReclaimable:     50 kB\n")
    c = make()
    c.meminfo_path = str(meminfo)
    samples = c.collect()
    assert {s.name: s.value for s in samples if s.name.startswith(("node_memory", "host_memory"))} == {
        "node_memory_MemTotal_bytes": 1024000, "node_memory_MemAvailable_bytes": 614400,
        "node_memory_MemFree_bytes": 102400, "node_memory_Buffers_bytes": 10240,
        "node_memory_Cached_bytes": 307200, "node_memory_SwapTotal_bytes": 204800,
        "node_memory_SwapFree_bytes": 153600, "host_memory_usage_percent": 40.0}


def test_one_series_per_core_and_mode(make) -> None:
    before = psutil.cpu_times(percpu=True)
    samples = make().collect()
    after = psutil.cpu_times(percpu=True)
    cpu = find(samples, "node_cpu_seconds_total")
    assert {s.labels["cpu"] for s in cpu} == {str(i) for i in range(os.cpu_count() or 0)}
    assert len(cpu) == len(host.CPU_MODES) * (os.cpu_count() or 0)
    for s in cpu:
        n, mode = int(s.labels["cpu"]), s.labels["mode"]
        slack = 0.05 if mode in ("idle", "iowait") else 0.0  # NO_HZ kernels may step these back a little
        assert getattr(before[n], mode) - slack <= s.value <= getattr(after[n], mode) + slack, s


def test_load_averages_are_the_kernels(make) -> None:
    before = os.getloadavg()
    samples = make().collect()
    after = os.getloadavg()
    for i, name in enumerate(("node_load1", "node_load5", "node_load15")):
        low, high = sorted((before[i], after[i]))
        assert low - 1e-9 <= value(samples, name) <= high + 1e-9


def burn_cpu(seconds: float = 0.05) -> None:
    """Busy-loop until the kernel has counted some CPU time (it counts in ticks)."""
    start = sum(psutil.cpu_times()[:8])
    deadline = time.monotonic() + 5
    end = time.monotonic() + seconds
    while time.monotonic() < end or (sum(psutil.cpu_times()[:8]) - start < 0.03 and time.monotonic() < deadline):
        pass


PERCENTS = ("host_cpu_usage_percent", "host_cpu_iowait_percent", "host_cpu_steal_percent")


def test_cpu_percents_absent_first_then_within_0_100(make) -> None:
    c = make()
    first = c.collect()
    assert not [s for s in first if s.name in PERCENTS]
    burn_cpu()
    second = c.collect()
    for name in PERCENTS:
        assert 0.0 <= value(second, name) <= 100.0
    assert value(second, "host_cpu_usage_percent") > 0  # we just burnt CPU


def test_cpu_percents_are_shares_of_the_total_delta(make, monkeypatch) -> None:
    real = psutil.cpu_times
    fields = real()._fields
    totals = iter([
        dict(user=100.0, nice=0.0, system=50.0, idle=1000.0, iowait=10.0, irq=0.0, softirq=0.0, steal=5.0),
        # +100 s in all: user 40, system 10, idle 30, iowait 10, steal 10 -> busy 60 %
        dict(user=140.0, nice=0.0, system=60.0, idle=1030.0, iowait=20.0, irq=0.0, softirq=0.0, steal=15.0),
    ])

    def fake(percpu: bool = False) -> Any:
        if percpu:
            return real(percpu=True)
        t = next(totals)
        return real().__class__(**{f: t.get(f, 0.0) for f in fields})

    monkeypatch.setattr(host.psutil, "cpu_times", fake)
    c = make()
    c.collect()
    samples = c.collect()
    assert value(samples, "host_cpu_usage_percent") == pytest.approx(60.0)
    assert value(samples, "host_cpu_iowait_percent") == pytest.approx(10.0)
    assert value(samples, "host_cpu_steal_percent") == pytest.approx(10.0)


def test_cpu_percent_does_not_touch_psutils_shared_state(make, monkeypatch) -> None:
    monkeypatch.setattr(host.psutil, "cpu_percent", lambda *a, **k: pytest.fail("cpu_percent called"))
    monkeypatch.setattr(host.psutil, "cpu_times_percent", lambda *a, **k: pytest.fail("cpu_times_percent called"))
    c = make()
    c.collect()
    burn_cpu()
    assert find(c.collect(), "host_cpu_usage_percent")


# ---------------------------------------------------------------------------
# filesystems
# ---------------------------------------------------------------------------


def test_a_real_mount_is_reported_with_its_fstype_and_sizes(make) -> None:
    device, point, fstype, _opts = reportable_mount()
    samples = make().collect()
    size = find(samples, "node_filesystem_size_bytes", mountpoint=point)
    assert len(size) == 1
    assert size[0].labels == {"device": device, "fstype": fstype, "mountpoint": point}
    st = os.statvfs(point)
    assert size[0].value == st.f_blocks * st.f_frsize
    assert value(samples, "node_filesystem_files", mountpoint=point) == st.f_files
    assert value(samples, "node_filesystem_device_error", mountpoint=point) == 0


def test_default_regexes_exclude_pseudo_filesystems_and_dev(make) -> None:
    points = {s.labels["mountpoint"] for s in make().collect() if s.name == "node_filesystem_size_bytes"}
    assert points
    assert not points & {"/proc", "/sys", "/dev", "/dev/shm", "/dev/pts", "/sys/fs/cgroup"}
    mounted = {m[1] for m in proc_mounts()}
    assert "/proc" in mounted  # so the exclusion above was tested on something that is there


def test_a_mount_point_excluded_by_the_option_is_not_reported(make) -> None:
    _device, point, _fstype, _opts = reportable_mount()
    samples = make(mount_points_exclude=f"^{re.escape(point)}$").collect()
    assert not [s for s in samples if s.labels.get("mountpoint") == point]
    assert find(make().collect(), "node_filesystem_size_bytes", mountpoint=point)  # reported without the option


def test_an_fstype_excluded_by_the_option_is_not_reported(make) -> None:
    _device, _point, fstype, _opts = reportable_mount()
    samples = make(fs_types_exclude=f"^{re.escape(fstype)}$").collect()
    assert not [s for s in samples if s.labels.get("fstype") == fstype]
    assert value(samples, "node_scrape_collector_success", collector="filesystem") == 1


def fake_statvfs(flag: int = 0) -> SimpleNamespace:
    return SimpleNamespace(f_bsize=4096, f_frsize=4096, f_blocks=1000, f_bfree=500, f_bavail=400, f_files=100,
                           f_ffree=50, f_flag=flag)


def test_recorded_mount_table(make) -> None:
    c = make()
    c.mounts_path = str(DATA / "mounts")
    asked: List[bytes] = []

    def statvfs(path: bytes) -> Any:
        asked.append(path)
        return fake_statvfs(os.ST_RDONLY if path == b"/mnt/flagged" else 0)

    c.fs.statvfs = statvfs
    samples = c.collect()
    table = c._mount_table()
    assert c._mount_table() is table  # parsed again only when the kernel's table changes
    sizes = {s.labels["mountpoint"]: s for s in find(samples, "node_filesystem_size_bytes")}
    assert sorted(sizes) == ["/", "/data", "/mnt/broken", "/mnt/flagged", "/mnt/stale", "/mnt/with space", "/run"]
    assert b"/mnt/with space" in asked  # the kernel's \040 undone for the call as for the label
    assert sizes["/data"].labels == {"device": "/dev/sdf1", "fstype": "xfs", "mountpoint": "/data"}
    assert sizes["/mnt/stale"].labels["fstype"] == "nfs4"
    assert sizes["/"].value == 4096 * 1000
    assert value(samples, "node_filesystem_avail_bytes", mountpoint="/") == 4096 * 400
    assert value(samples, "node_filesystem_free_bytes", mountpoint="/") == 4096 * 500
    assert value(samples, "node_filesystem_files_free", mountpoint="/") == 50
    readonly = {s.labels["mountpoint"]: s.value for s in find(samples, "node_filesystem_readonly")}
    assert readonly == {"/": 0, "/run": 0, "/mnt/stale": 0, "/mnt/broken": 0, "/mnt/with space": 1,
                        "/mnt/flagged": 1, "/data": 0}


def test_hung_and_failing_statvfs_cost_one_timeout_and_do_not_block_the_others(make) -> None:
    c = make(mount_timeout="100ms")
    c.mounts_path = str(DATA / "mounts")
    release = threading.Event()
    calls: Dict[bytes, int] = {}

    def statvfs(path: bytes) -> Any:
        calls[path] = calls.get(path, 0) + 1
        if path == b"/mnt/stale":
            release.wait(30)
        if path == b"/mnt/broken":
            raise OSError(errno.EIO, "Input/output error")
        return fake_statvfs()

    c.fs.statvfs = statvfs

    def errors(samples: List[Sample]) -> Dict[str, float]:
        return {s.labels["mountpoint"]: s.value for s in find(samples, "node_filesystem_device_error")}

    started = time.monotonic()
    first = c.collect()
    assert time.monotonic() - started < 1.0
    expected = {"/": 0, "/run": 0, "/mnt/stale": 1, "/mnt/broken": 1, "/mnt/with space": 0, "/mnt/flagged": 0,
                "/data": 0}
    assert errors(first) == expected
    # the mounts listed after the hung one were still measured
    assert value(first, "node_filesystem_size_bytes", mountpoint="/data") == 4096 * 1000
    assert not find(first, "node_filesystem_size_bytes", mountpoint="/mnt/stale")
    assert not find(first, "node_filesystem_size_bytes", mountpoint="/mnt/broken")

    started = time.monotonic()
    second = c.collect()
    assert time.monotonic() - started < 0.09  # the stuck mount is not waited for again
    assert errors(second) == expected
    assert calls[b"/mnt/stale"] == 1 and calls[b"/mnt/broken"] == 2

    release.set()
    deadline = time.monotonic() + 5
    while c.fs.stuck and time.monotonic() < deadline:
        time.sleep(0.005)
    third = c.collect()
    assert errors(third) == {**expected, "/mnt/stale": 0}
    assert value(third, "node_filesystem_size_bytes", mountpoint="/mnt/stale") == 4096 * 1000


def test_a_failing_mount_is_logged_once_not_every_cycle(make, caplog) -> None:
    c = make()
    c.mounts_path = str(DATA / "mounts")

    def statvfs(path: bytes) -> Any:
        if path == b"/mnt/broken":
            raise OSError(errno.EIO, "Input/output error")
        return fake_statvfs()

    c.fs.statvfs = statvfs
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            c.collect()
    assert len([r for r in caplog.records if "/mnt/broken" in r.getMessage()]) == 1


# ---------------------------------------------------------------------------
# disks and network
# ---------------------------------------------------------------------------


def test_disks_are_the_kernels_minus_partitions_and_virtual_devices(make) -> None:
    before = psutil.disk_io_counters(perdisk=True, nowrap=False)
    samples = make().collect()
    exclude = re.compile(host.DISK_DEVICES_EXCLUDE)
    expected = {d for d in before if not exclude.search(d)}
    reported = {s.labels["device"] for s in find(samples, "node_disk_reads_completed_total")}
    assert reported == expected
    assert set(before) - expected <= {d for d in before if exclude.search(d)}
    for d in expected:
        assert value(samples, "node_disk_reads_completed_total", device=d) >= before[d].read_count
        assert value(samples, "node_disk_written_bytes_total", device=d) >= before[d].write_bytes
        assert value(samples, "node_disk_io_time_seconds_total", device=d) >= before[d].busy_time / 1000


def test_disk_exclusion_follows_the_option(make) -> None:
    devices = set(psutil.disk_io_counters(perdisk=True, nowrap=False))
    samples = make(disk_devices_exclude="").collect()
    assert {s.labels["device"] for s in find(samples, "node_disk_writes_completed_total")} == devices


def test_network_devices_but_loopback(make) -> None:
    before = psutil.net_io_counters(pernic=True, nowrap=False)
    samples = make().collect()
    reported = {s.labels["device"] for s in find(samples, "node_network_receive_bytes_total")}
    assert reported == set(before) - {"lo"}
    assert "lo" in before
    for d in reported:
        assert value(samples, "node_network_receive_bytes_total", device=d) >= before[d].bytes_recv
        assert value(samples, "node_network_transmit_packets_total", device=d) >= before[d].packets_sent
    with_lo = make(network_devices_exclude="").collect()
    assert find(with_lo, "node_network_receive_drop_total", device="lo")


# ---------------------------------------------------------------------------
# options checked when the configuration is read
# ---------------------------------------------------------------------------


def test_a_bad_regex_is_a_configuration_error_naming_its_key() -> None:
    _values, errors = validate_table({"mount_points_exclude": "^/(dev"}, collector_type().options)
    assert errors and errors[0][0] == ("mount_points_exclude",)
    assert "regular expression" in errors[0][1]


@pytest.mark.parametrize("service, problem", [
    ({"unit": "api.service"}, 'missing required key "name"'),
    ({"name": "api", "unit": "../../etc/passwd"}, "systemd unit name"),
    ({"name": "api", "pidfile": "run/api.pid"}, "absolute path"),
    ({"name": "api", "process": ""}, "process name"),
    ({"name": "api", "process": "/usr/bin/api"}, "process name (not a path)"),
    ({"name": "api", "process": "api", "port": 80}, "unknown key"),
])
def test_service_tables_are_checked_by_their_declared_keys(service: Dict[str, Any], problem: str) -> None:
    _values, errors = validate_table({"services": [service]}, collector_type().options)
    assert errors and problem in errors[0][1], errors


@pytest.mark.parametrize("service, says", [
    ({"name": "api"}, 'service "api": set exactly one of unit, process or pidfile'),
    ({"name": "api", "unit": "api.service", "process": "api"}, "(it sets unit and process)"),
    ({"name": "api", "process": "api", "pidfile": "/run/api.pid"}, "(it sets process and pidfile)"),
])
def test_a_service_needs_exactly_one_way_to_find_it(service: Dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=r'service "api"') as e:
        build(services=[service])
    assert says in str(e.value)


def test_two_services_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match='service "api": configured twice'):
        build(services=[{"name": "api", "process": "a"}, {"name": "api", "pidfile": "/run/a.pid"}])


# ---------------------------------------------------------------------------
# services by process name and by pidfile
# ---------------------------------------------------------------------------


def assert_running(samples: List[Sample], service: str, processes: int = 1) -> None:
    assert value(samples, "service_up", service=service) == 1
    assert value(samples, "service_processes", service=service) == processes
    assert value(samples, "service_resident_memory_bytes", service=service) > 0
    assert value(samples, "service_threads", service=service) >= processes
    assert value(samples, "service_open_fds", service=service) >= 0
    assert value(samples, "service_cpu_seconds_total", service=service) >= 0


def assert_down(samples: List[Sample], service: str) -> None:
    assert value(samples, "service_up", service=service) == 0
    assert value(samples, "service_processes", service=service) == 0
    assert not find(samples, "service_resident_memory_bytes", service=service)


def test_service_by_process_name(make, spawn, tmp_path) -> None:
    name = unique_name("n")
    p = spawn([sleeper_link(tmp_path, name), "30"])
    samples = make(services=[{"name": "sleeper", "process": name}]).collect()
    assert_running(samples, "sleeper")
    rss = psutil.Process(p.pid).memory_info().rss
    assert value(samples, "service_resident_memory_bytes", service="sleeper") == pytest.approx(rss, rel=0.5)


def test_service_by_argv0_when_the_name_is_longer_than_comm(make, spawn, tmp_path) -> None:
    name = f"npuagent-long-name-{os.getpid()}"  # longer than the kernel's 15-character comm
    spawn([str(tmp_path / name), "30"], executable=SLEEP)  # comm is "sleep"; argv[0] is the long name
    samples = make(services=[{"name": "long", "process": name}]).collect()
    assert_running(samples, "long")


def test_service_by_process_name_counts_a_replaced_process_as_a_restart(make, spawn, tmp_path) -> None:
    name = unique_name("r")
    link = sleeper_link(tmp_path, name)
    first = spawn([link, "30"])
    c = make(services=[{"name": "sleeper", "process": name}])
    samples = c.collect()
    assert value(samples, "service_up", service="sleeper") == 1
    assert value(samples, "service_restarts_total", service="sleeper") == 0
    stop(first)
    samples = c.collect()
    assert_down(samples, "sleeper")
    assert value(samples, "service_restarts_total", service="sleeper") == 0
    spawn([link, "30"])
    samples = c.collect()
    assert_running(samples, "sleeper")
    assert value(samples, "service_restarts_total", service="sleeper") == 1
    assert value(c.collect(), "service_restarts_total", service="sleeper") == 1  # same process: no new restart


def test_a_found_process_is_not_searched_for_again_until_it_is_gone(make, spawn, tmp_path, monkeypatch) -> None:
    name = unique_name("c")
    p = spawn([sleeper_link(tmp_path, name), "30"])
    c = make(services=[{"name": "sleeper", "process": name}])
    scans = []
    real = c._find_by_name
    monkeypatch.setattr(c, "_find_by_name", lambda n: scans.append(n) or real(n))
    c.collect()
    assert scans == [name]
    scans.clear()
    main = c.services[0].main
    assert main is not None and main.pid == p.pid
    for _ in range(3):
        assert value(c.collect(), "service_up", service="sleeper") == 1
    assert scans == []
    assert c.services[0].main is main and c.services[0].procs[p.pid] is main  # one psutil.Process, kept
    monkeypatch.setattr(main, "is_running", lambda: False)  # as psutil says when the pid is someone else's now
    assert value(c.collect(), "service_up", service="sleeper") == 1
    assert scans == [name] and c.services[0].main is not main
    scans.clear()
    stop(p)
    assert value(c.collect(), "service_up", service="sleeper") == 0
    assert scans == [name]


def test_service_by_pidfile_goes_down_and_counts_the_restart(make, spawn, tmp_path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    first = spawn([SLEEP, "30"])
    pidfile.write_text(f"{first.pid}\n")
    c = make(services=[{"name": "sleeper", "pidfile": str(pidfile)}])
    samples = c.collect()
    assert_running(samples, "sleeper")
    assert value(samples, "service_restarts_total", service="sleeper") == 0
    stop(first)  # the pidfile now names a dead pid
    samples = c.collect()
    assert_down(samples, "sleeper")
    second = spawn([SLEEP, "30"])
    pidfile.write_text(f"{second.pid}\n")
    samples = c.collect()
    assert_running(samples, "sleeper")
    assert value(samples, "service_restarts_total", service="sleeper") == 1


@pytest.mark.parametrize("content", [None, "", "not a pid\n", "-5\n"])
def test_a_missing_or_garbled_pidfile_is_down_not_an_error(make, tmp_path, content: Optional[str]) -> None:
    pidfile = tmp_path / "api.pid"
    if content is not None:
        pidfile.write_text(content)
    samples = make(services=[{"name": "api", "pidfile": str(pidfile)}]).collect()
    assert_down(samples, "api")
    assert value(samples, "node_scrape_collector_success", collector="services") == 1


def test_a_pidfile_service_counts_its_children(make, spawn, tmp_path) -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("kernel without CONFIG_PROC_CHILDREN")
    ready = tmp_path / "ready"
    parent = spawn(["/bin/sh", "-c", f'"{SLEEP}" 30 & "{SLEEP}" 30 & touch "{ready}"; wait'])
    deadline = time.monotonic() + 5
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    pidfile = tmp_path / "sh.pid"
    pidfile.write_text(str(parent.pid))
    samples = make(services=[{"name": "tree", "pidfile": str(pidfile)}]).collect()
    assert_running(samples, "tree", processes=3)


def test_figures_not_ours_to_read_are_left_out_not_zeroed(make, spawn, tmp_path, monkeypatch) -> None:
    def denied(self: psutil.Process) -> int:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "num_fds", denied)
    p = spawn([SLEEP, "30"])
    pidfile = tmp_path / "p.pid"
    pidfile.write_text(str(p.pid))
    samples = make(services=[{"name": "p", "pidfile": str(pidfile)}]).collect()
    assert value(samples, "service_up", service="p") == 1
    assert value(samples, "service_resident_memory_bytes", service="p") > 0
    assert not find(samples, "service_open_fds", service="p")


# ---------------------------------------------------------------------------
# services by systemd unit, with a fake cgroup tree and a stand-in systemctl
# ---------------------------------------------------------------------------


def fake_cgroup(root: Path, relative: str, *pids: int) -> Path:
    d = root / relative
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    (d / "cgroup.controllers").write_text("cpu memory pids\n")
    return d


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def unit_process(spawn) -> subprocess.Popen:
    return spawn([SLEEP, "30"])


def test_unit_service_from_its_cgroup_and_systemctl(make, tmp_path, unit_process) -> None:
    pid = unit_process.pid
    fake_cgroup(tmp_path / "cg", "system.slice/npa-test.service", pid)
    systemctl = script(tmp_path / "systemctl", f"printf 'MainPID={pid}\\nNRestarts=3\\nActiveState=active\\n'\n")
    samples = make(services=[{"name": "api", "unit": "npa-test.service"}], cgroup_root=str(tmp_path / "cg"),
                   systemctl=systemctl).collect()
    assert_running(samples, "api")
    assert value(samples, "service_restarts_total", service="api") == 3


@pytest.mark.parametrize("state, up", [("active", 1), ("reloading", 1), ("activating", 0), ("failed", 0),
                                       ("inactive", 0)])
def test_unit_up_is_systemds_active_state(make, tmp_path, unit_process, state: str, up: int) -> None:
    fake_cgroup(tmp_path / "cg", "system.slice/npa-test.service", unit_process.pid)
    systemctl = script(tmp_path / "systemctl", f"printf 'NRestarts=0\\nActiveState={state}\\nMainPID=0\\n'\n")
    samples = make(services=[{"name": "api", "unit": "npa-test"}], cgroup_root=str(tmp_path / "cg"),
                   systemctl=systemctl).collect()
    assert value(samples, "service_up", service="api") == up


def test_without_systemctl_a_unit_is_up_from_its_cgroup_and_that_is_logged_once(make, tmp_path, unit_process,
                                                                                caplog) -> None:
    fake_cgroup(tmp_path / "cg", "system.slice/npa-test.service", unit_process.pid)
    fake_cgroup(tmp_path / "cg", "system.slice/npa-empty.service")
    c = make(services=[{"name": "api", "unit": "npa-test.service"}, {"name": "idle", "unit": "npa-empty.service"},
                       {"name": "gone", "unit": "npa-nothere.service"}],
             cgroup_root=str(tmp_path / "cg"), systemctl=str(tmp_path / "no-such-systemctl"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            samples = c.collect()
    assert_running(samples, "api")
    assert value(samples, "service_up", service="idle") == 0
    assert value(samples, "service_up", service="gone") == 0
    assert not find(samples, "service_restarts_total")  # unknown, so not reported as 0
    assert value(samples, "node_scrape_collector_success", collector="services") == 1
    assert len([r for r in caplog.records if "no-such-systemctl" in r.getMessage()]) == 1


def test_a_failing_systemctl_leaves_the_cgroup_to_judge(make, tmp_path, unit_process) -> None:
    fake_cgroup(tmp_path / "cg", "system.slice/npa-test.service", unit_process.pid)
    systemctl = script(tmp_path / "systemctl", "echo 'Failed to connect to bus' >&2\nexit 1\n")
    samples = make(services=[{"name": "api", "unit": "npa-test.service"}], cgroup_root=str(tmp_path / "cg"),
                   systemctl=systemctl).collect()
    assert_running(samples, "api")
    assert not find(samples, "service_restarts_total")


def test_cgroup_v1_systemd_hierarchy_and_delegated_subgroups(make, tmp_path, spawn) -> None:
    a, b = spawn([SLEEP, "30"]), spawn([SLEEP, "30"])
    unit = fake_cgroup(tmp_path / "cg", "systemd/system.slice/npa-test.service", a.pid)
    (unit / "worker").mkdir()
    (unit / "worker" / "cgroup.procs").write_text(f"{b.pid}\n")
    samples = make(services=[{"name": "api", "unit": "npa-test.service"}], cgroup_root=str(tmp_path / "cg"),
                   systemctl=str(tmp_path / "none")).collect()
    assert_running(samples, "api", processes=2)


def test_systemds_control_group_is_where_the_processes_are_looked_for(make, tmp_path, unit_process) -> None:
    fake_cgroup(tmp_path / "cg", "inference.slice/npa-test.service", unit_process.pid)
    systemctl = script(tmp_path / "systemctl", "printf 'ActiveState=active\\nNRestarts=0\\n"
                                               "ControlGroup=/inference.slice/npa-test.service\\n'\n")
    samples = make(services=[{"name": "api", "unit": "npa-test.service"}], cgroup_root=str(tmp_path / "cg"),
                   systemctl=systemctl).collect()
    assert_running(samples, "api")


def test_a_unit_without_a_cgroup_where_we_look_has_at_least_its_main_pid(make, tmp_path, unit_process) -> None:
    systemctl = script(tmp_path / "systemctl", f"printf 'MainPID={unit_process.pid}\\nActiveState=active\\n"
                                               "ControlGroup=/elsewhere.slice/npa-test.service\\n'\n")
    samples = make(services=[{"name": "api", "unit": "npa-test.service"}], cgroup_root=str(tmp_path / "cg"),
                   systemctl=systemctl).collect()
    assert_running(samples, "api")
    assert not find(samples, "service_restarts_total", service="api")  # this systemd gave no NRestarts


def zombie(spawn: Callable[..., subprocess.Popen]) -> int:
    """A child of ours that has exited and is not reaped yet."""
    p = spawn([SLEEP, "30"])
    p.kill()
    deadline = time.monotonic() + 5
    while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.002)
    return p.pid


def test_a_zombie_is_not_one_of_a_units_processes(make, tmp_path, spawn, unit_process) -> None:
    fake_cgroup(tmp_path / "cg", "system.slice/npa-test.service", unit_process.pid, zombie(spawn))
    samples = make(services=[{"name": "api", "unit": "npa-test.service"}], cgroup_root=str(tmp_path / "cg"),
                   systemctl=str(tmp_path / "none")).collect()
    assert_running(samples, "api", processes=1)


def test_a_pidfile_naming_a_zombie_is_down(make, tmp_path, spawn) -> None:
    pidfile = tmp_path / "z.pid"
    pidfile.write_text(str(zombie(spawn)))
    assert_down(make(services=[{"name": "z", "pidfile": str(pidfile)}]).collect(), "z")


def test_one_systemctl_call_answers_for_every_unit(make, tmp_path, spawn) -> None:
    a, b = spawn([SLEEP, "30"]), spawn([SLEEP, "30"])
    fake_cgroup(tmp_path / "cg", "system.slice/a.service", a.pid)
    fake_cgroup(tmp_path / "cg", "system.slice/b.service", b.pid)
    calls = tmp_path / "calls"
    systemctl = script(tmp_path / "systemctl", f"""echo "$*" >> "{calls}"
shift 2
n=0
for unit in "$@"; do
    [ "$n" -gt 0 ] && echo
    n=$((n + 1))
    printf 'MainPID=0\\nNRestarts=%s\\nActiveState=active\\n' "$n"
done
""")
    c = make(services=[{"name": "a", "unit": "a"}, {"name": "b", "unit": "b.service"}],
             cgroup_root=str(tmp_path / "cg"), systemctl=systemctl)
    samples = c.collect()
    assert calls.read_text().splitlines() == ["show --property=MainPID,NRestarts,ActiveState,ControlGroup "
                                              "a.service b.service"]
    assert value(samples, "service_restarts_total", service="a") == 1
    assert value(samples, "service_restarts_total", service="b") == 2
    assert value(samples, "service_up", service="b") == 1


# ---------------------------------------------------------------------------
# robustness and cost
# ---------------------------------------------------------------------------


def test_a_broken_source_costs_only_its_own_series_and_one_log_line(make, tmp_path, caplog) -> None:
    c = make()
    c.meminfo_path = str(tmp_path / "no-meminfo")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            samples = c.collect()
    assert value(samples, "node_scrape_collector_success", collector="meminfo") == 0
    assert not find(samples, "node_memory_MemTotal_bytes")
    for part in ("cpu", "loadavg", "filesystem", "diskstats", "netdev"):
        assert value(samples, "node_scrape_collector_success", collector=part) == 1
    assert find(samples, "node_cpu_seconds_total") and find(samples, "node_load1")
    assert len([r for r in caplog.records if "meminfo" in r.getMessage()]) == 1


def test_close_stops_the_statvfs_worker(make) -> None:
    c = make()
    before = set(threading.enumerate())
    c.collect()
    workers = [t for t in set(threading.enumerate()) - before if t.name == "host-statvfs"]
    assert workers
    c.close()
    for t in workers:
        t.join(2)
    assert not [t for t in workers if t.is_alive()]
