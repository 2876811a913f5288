"""The host collector: CPU, load, memory, filesystems, disks, network, and the services an operator names.

One self-contained collector, as node_exporter keeps one per source, and named as node_exporter names
its series wherever it has a name, so that existing dashboards and PromQL run unchanged. Where operators'
rules want a ready figure node_exporter does not give (a CPU or memory percentage, whether a service is
up), the series is ``host_*`` or ``service_*``.

Decisions, and why:

* It runs every 10 s on every server of a fleet, so it has to be cheap (the budget for a whole agent
  cycle with it is 3 ms of CPU). Regexes are compiled once, in the factory; label dicts are built once
  per CPU, device and mount and reused; the mount table is parsed again only when it changes; nothing
  scans every process on a normal cycle.
* ``/proc/meminfo`` is read directly, not through ``psutil.virtual_memory()``: psutil's ``cached``
  adds ``SReclaimable`` to the kernel's ``Cached``, and a dashboard built for node_exporter that
  subtracts both would count it twice. (It is also a quarter of the cost of psutil's two reads.)
* Mounts come from ``/proc/self/mounts`` and node_exporter's exclusion regexes, not from
  ``psutil.disk_partitions()``: psutil calls ``pathconf()`` (a ``statfs``) on every mount it lists,
  outside any timeout, so one stale NFS mount would hang the whole collection in psutil before our own
  guarded ``statvfs`` got the chance to time out; and ``all=False`` drops ``tmpfs`` and network
  filesystems (``/dev/shm``, the NFS that holds model weights), which node_exporter reports and
  operators alert on. ``statvfs`` runs in a helper thread with a per-mount timeout; a mount that hangs
  is reported as ``node_filesystem_device_error 1`` and not asked again until its call returns
  (node_exporter's "stuck mounts").
* Disk and network counters are read with ``nowrap=False``: the kernel's 64-bit counters do not wrap,
  Prometheus handles resets, and psutil's wrap fixer keeps process-wide state and costs a third more.
* ``host_cpu_*_percent`` come from this collector's own previous ``cpu_times()``, never from
  ``psutil.cpu_percent()``, whose "since the last call" state is shared with every other caller in the
  process. The first collection has nothing to compare with, so it reports no percentage at all
  rather than a made-up 0. iowait counts as idle in the usage (the CPU is free to run something),
  and is reported on its own.
* A service is found by systemd unit (its cgroup, and ``systemctl show`` for state and NRestarts), by
  process name, or by pidfile. For the last two, "its processes" are the main process and its
  descendants, found through the kernel's ``/proc/<pid>/task/<pid>/children`` lists (children forked by
  a thread other than a process's main thread are not seen); the main process is cached between
  collections and checked by pid and start time, and the process table is scanned only when it is gone.
* Nothing that a source can do (a missing file, a hung mount, a process that exits or is not ours to
  read, a missing ``systemctl``) raises out of :meth:`HostCollector.collect`: each part that fails is
  ``node_scrape_collector_success{collector} 0`` and one log line, not one per cycle.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Set, Tuple

import psutil

from npuagent import hookimpl
from npuagent.commands import CommandNotFound, CommandTimeout
from npuagent.context import PluginContext
from npuagent.model import CollectorType, MetricSpec, Sample
from npuagent.options import Array, Duration, Option, OptionError, String, Table, ValueType

# node_exporter's defaults (collector/filesystem_linux.go, diskstats_linux.go, netdev_common.go).
MOUNT_POINTS_EXCLUDE = r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
FS_TYPES_EXCLUDE = (r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|"
                    r"mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$")
DISK_DEVICES_EXCLUDE = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"
NETWORK_DEVICES_EXCLUDE = r"^lo$"

#: The CPU modes node_cpu_seconds_total reports, as psutil names them on Linux. guest and guest_nice
#: are left out: the kernel already counts them in user and nice.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

#: /proc/meminfo keys and the series they become (values are kB there, bytes here).
MEMINFO = {
    b"MemTotal": "node_memory_MemTotal_bytes",
    b"MemAvailable": "node_memory_MemAvailable_bytes",
    b"MemFree": "node_memory_MemFree_bytes",
    b"Buffers": "node_memory_Buffers_bytes",
    b"Cached": "node_memory_Cached_bytes",
    b"SwapTotal": "node_memory_SwapTotal_bytes",
    b"SwapFree": "node_memory_SwapFree_bytes",
}

#: Unit types systemd knows; a unit named without one is a service, as systemctl reads it.
_UNIT_SUFFIXES = (".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target", ".path",
                  ".timer", ".slice", ".scope")
_UP_STATES = ("active", "reloading")
_SERVICE_KINDS = ("unit", "process", "pidfile")
#: At most this many processes are followed down a process/pidfile service's tree, and read from a
#: unit's cgroup: a fork bomb in a watched service must not turn into a collection that never ends.
_MAX_SERVICE_PROCESSES = 4096

_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


class Regex(ValueType):
    """A regular expression, compiled when the configuration is read, so that a typo is reported with
    its file, line and key by ``npuagent check`` instead of breaking the collector at start.
    The empty string means "exclude nothing"."""

    description = "a regular expression"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.wrong(value)
        try:
            re.compile(value)
        except re.error as e:
            raise OptionError(f"not a valid regular expression: {e}") from None
        return value


SERVICE_OPTIONS = [
    Option("name", String(r"\S(.*\S)?", hint="a non-empty name"),
           help="the value of the service label of the service_* series"),
    Option("unit", String(r"(?!\.)[A-Za-z0-9:_.\\@-]+", hint='a systemd unit name such as "vllm.service"'), None,
           help="a systemd unit: its processes are its cgroup's; state and restarts come from systemctl"),
    Option("process", String(r"[^/\x00]+", hint="a process name (not a path)"), None,
           help="a process name, matched against the process's name or the basename of its argv[0]"),
    Option("pidfile", String(r"/.+", hint="an absolute path"), None,
           help="a file holding the pid of the service's main process"),
]

OPTIONS = [
    Option("mount_points_exclude", Regex(), MOUNT_POINTS_EXCLUDE,
           help="mount points not reported (node_exporter's --collector.filesystem.mount-points-exclude)"),
    Option("fs_types_exclude", Regex(), FS_TYPES_EXCLUDE,
           help="filesystem types not reported (node_exporter's --collector.filesystem.fs-types-exclude)"),
    Option("mount_timeout", Duration(min=0.001), 1.0,
           help="how long one statvfs may take before its mount is reported as an error and left alone "
                "until the call returns (a stale NFS server)"),
    Option("disk_devices_exclude", Regex(), DISK_DEVICES_EXCLUDE,
           help="block devices not reported: partitions and virtual devices "
                "(node_exporter's --collector.diskstats.device-exclude)"),
    Option("network_devices_exclude", Regex(), NETWORK_DEVICES_EXCLUDE,
           help="network devices not reported (node_exporter's --collector.netdev.device-exclude)"),
    Option("services", Array(Table(SERVICE_OPTIONS)), (),
           help="services to watch: tables of name and exactly one of unit, process or pidfile"),
    Option("cgroup_root", String(r"/.*", hint="an absolute path"), "/sys/fs/cgroup",
           help="where the cgroup hierarchy is mounted (v2, or v1 with its name=systemd hierarchy)"),
    Option("systemctl", String(r".+", hint="a command"), "systemctl",
           help="the systemctl to ask for units' state and restart counts"),
]

METRICS = [
    MetricSpec("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode."),
    MetricSpec("node_load1", "gauge", "1m load average."),
    MetricSpec("node_load5", "gauge", "5m load average."),
    MetricSpec("node_load15", "gauge", "15m load average."),
    MetricSpec("host_cpu_usage_percent", "gauge",
               "Share of the whole host's CPU time that was busy (not idle, not iowait) since the previous "
               "collection."),
    MetricSpec("host_cpu_iowait_percent", "gauge",
               "Share of the whole host's CPU time spent idle waiting for I/O since the previous collection."),
    MetricSpec("host_cpu_steal_percent", "gauge",
               "Share of the whole host's CPU time stolen by the hypervisor since the previous collection."),
    MetricSpec("node_memory_MemTotal_bytes", "gauge", "Memory information field MemTotal_bytes."),
    MetricSpec("node_memory_MemAvailable_bytes", "gauge", "Memory information field MemAvailable_bytes."),
    MetricSpec("node_memory_MemFree_bytes", "gauge", "Memory information field MemFree_bytes."),
    MetricSpec("node_memory_Buffers_bytes", "gauge", "Memory information field Buffers_bytes."),
    MetricSpec("node_memory_Cached_bytes", "gauge", "Memory information field Cached_bytes."),
    MetricSpec("node_memory_SwapTotal_bytes", "gauge", "Memory information field SwapTotal_bytes."),
    MetricSpec("node_memory_SwapFree_bytes", "gauge", "Memory information field SwapFree_bytes."),
    MetricSpec("host_memory_usage_percent", "gauge", "Memory in use: (MemTotal - MemAvailable) / MemTotal * 100."),
    MetricSpec("node_filesystem_size_bytes", "gauge", "Filesystem size in bytes."),
    MetricSpec("node_filesystem_avail_bytes", "gauge", "Filesystem space available to non-root users in bytes."),
    MetricSpec("node_filesystem_free_bytes", "gauge", "Filesystem free space in bytes."),
    MetricSpec("node_filesystem_files", "gauge", "Filesystem total file nodes."),
    MetricSpec("node_filesystem_files_free", "gauge", "Filesystem total free file nodes."),
    MetricSpec("node_filesystem_readonly", "gauge", "Filesystem read-only status."),
    MetricSpec("node_filesystem_device_error", "gauge",
               "Whether an error occurred while getting statistics for the given device (1 also when its "
               "statvfs hangs)."),
    MetricSpec("node_disk_reads_completed_total", "counter", "The total number of reads completed successfully."),
    MetricSpec("node_disk_writes_completed_total", "counter", "The total number of writes completed successfully."),
    MetricSpec("node_disk_read_bytes_total", "counter", "The total number of bytes read successfully."),
    MetricSpec("node_disk_written_bytes_total", "counter", "The total number of bytes written successfully."),
    MetricSpec("node_disk_io_time_seconds_total", "counter", "Total seconds spent doing I/Os."),
    MetricSpec("node_network_receive_bytes_total", "counter", "Network device statistic receive_bytes."),
    MetricSpec("node_network_transmit_bytes_total", "counter", "Network device statistic transmit_bytes."),
    MetricSpec("node_network_receive_packets_total", "counter", "Network device statistic receive_packets."),
    MetricSpec("node_network_transmit_packets_total", "counter", "Network device statistic transmit_packets."),
    MetricSpec("node_network_receive_errs_total", "counter", "Network device statistic receive_errs."),
    MetricSpec("node_network_transmit_errs_total", "counter", "Network device statistic transmit_errs."),
    MetricSpec("node_network_receive_drop_total", "counter", "Network device statistic receive_drop."),
    MetricSpec("node_network_transmit_drop_total", "counter", "Network device statistic transmit_drop."),
    MetricSpec("node_scrape_collector_success", "gauge",
               "Whether a part of the host collector (cpu, loadavg, meminfo, filesystem, diskstats, netdev, "
               "services) succeeded."),
    MetricSpec("service_up", "gauge",
               "1 when the service runs: its unit is active (or reloading), or its main process exists."),
    MetricSpec("service_cpu_seconds_total", "counter", "User and system CPU seconds of the service's processes."),
    MetricSpec("service_resident_memory_bytes", "gauge", "Resident memory of the service's processes, summed."),
    MetricSpec("service_threads", "gauge", "Threads of the service's processes."),
    MetricSpec("service_open_fds", "gauge", "Open file descriptors of the service's processes."),
    MetricSpec("service_processes", "gauge", "Processes the service has."),
    MetricSpec("service_restarts_total", "counter",
               "Restarts of the service: systemd's NRestarts for a unit, otherwise how many times its main "
               "process was replaced by another since the agent started."),
]


# ---------------------------------------------------------------------------
# statvfs with a timeout
# ---------------------------------------------------------------------------


class _Job:
    """The mounts handed to one statvfs worker in one collection, and how far it got."""

    __slots__ = ("abandoned", "done", "index", "paths", "results")

    def __init__(self, paths: Sequence[bytes]) -> None:
        self.paths = paths
        self.results: list = []
        self.index = 0
        self.done = threading.Event()
        self.abandoned = False


#: A mount whose statvfs did not return in time (this collection, or an earlier one still pending).
STUCK = TimeoutError("statvfs did not return within the mount timeout")


class StatvfsRunner:
    """Calls ``statvfs`` in a helper thread, so that a mount whose server is gone costs one timeout, once.

    Python cannot interrupt a thread blocked in a system call, so the thread that hangs is given up:
    its mount is remembered as stuck (reported as an error, and not asked again while the call is
    pending), and a new thread takes the remaining mounts. When the hung call finally returns, the old
    thread clears the mark and ends. One thread serves all the mounts of a collection, so the normal
    cost is two thread switches, not one per mount.
    """

    def __init__(self, statvfs: Callable[[bytes], Any] = os.statvfs) -> None:
        self.statvfs = statvfs
        self.stuck: Set[bytes] = set()
        self._lock = threading.Lock()
        self._queue: Optional[queue.SimpleQueue] = None

    def run(self, paths: Sequence[bytes], timeout: float, budget: float) -> list:
        """statvfs each path; returns, in order, the result, the exception it raised, :data:`STUCK`,
        or ``None`` for a mount not reached within ``budget`` seconds (it is tried next time)."""
        results: list = [None] * len(paths)
        with self._lock:
            stuck = set(self.stuck)
        todo = []
        for i, path in enumerate(paths):
            if path in stuck:
                results[i] = STUCK
            else:
                todo.append(i)
        end = time.monotonic() + budget
        while todo:
            job = _Job([paths[i] for i in todo])
            self._worker().put(job)
            seen, stuck_at = 0, -1
            while not job.done.wait(max(min(timeout, end - time.monotonic()), 0.0)):
                with self._lock:
                    if job.done.is_set():
                        break
                    if job.index > seen and time.monotonic() < end:
                        seen = job.index  # slow, but moving: give the next mount its own timeout
                        continue
                    # the call at job.index has not returned in time: give that thread up
                    job.abandoned = True
                    stuck_at = job.index
                    self.stuck.add(job.paths[stuck_at])
                    self._queue = None
                break
            for j, result in enumerate(job.results):
                results[todo[j]] = result
            if stuck_at < 0:
                break
            results[todo[stuck_at]] = STUCK
            todo = todo[stuck_at + 1:]
            if time.monotonic() >= end:
                break
        return results

    def _worker(self) -> queue.SimpleQueue:
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(self._queue,), name="host-statvfs", daemon=True).start()
        return self._queue

    def _work(self, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            last = len(job.paths) - 1
            for i, path in enumerate(job.paths):
                try:
                    result = self.statvfs(path)
                except Exception as e:
                    result = e
                with self._lock:
                    if job.abandoned:  # this thread was given up while it hung here; another one serves now
                        self.stuck.discard(path)
                        return
                    job.results.append(result)
                    job.index = i + 1
                    if i == last:
                        job.done.set()

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._queue = None


# ---------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------


class Service:
    """One configured service and what the collector remembers of it between collections."""

    def __init__(self, name: str, kind: str, target: str) -> None:
        self.name = name
        self.kind = kind
        self.target = target
        self.labels = {"service": name}
        #: the main process (process and pidfile services), kept so that it is not searched for again
        self.main: Optional[psutil.Process] = None
        #: (pid, create_time) of the main process last seen, to count restarts
        self.seen: Optional[Tuple[int, float]] = None
        self.restarts = 0
        #: psutil.Process objects by pid, kept across collections so that they are not rebuilt each time
        self.procs: Dict[int, psutil.Process] = {}
        #: the cgroup directory of a unit where its cgroup.procs was found last time
        self.cgroup_dir: Optional[str] = None


def _parse_services(specs: Iterable[Mapping[str, Any]]) -> list:
    """Turn the ``services`` option into :class:`Service` objects, with the checks a Table cannot make."""
    out, names = [], set()
    for spec in specs:
        name = spec["name"]
        given = [k for k in _SERVICE_KINDS if spec.get(k) is not None]
        if len(given) != 1:
            which = f" (it sets {' and '.join(given)})" if given else ""
            raise ValueError(f'service "{name}": set exactly one of unit, process or pidfile{which}')
        if name in names:
            raise ValueError(f'service "{name}": configured twice; each needs a name of its own '
                             "(it is the service label)")
        names.add(name)
        kind = given[0]
        target = spec[kind]
        if kind == "unit" and not target.endswith(_UNIT_SUFFIXES):
            target += ".service"  # as systemctl reads a unit named without its type
        out.append(Service(name, kind, target))
    return out


def _compile(pattern: str) -> Optional[re.Pattern]:
    return re.compile(pattern) if pattern else None


def _unescape(field: bytes) -> bytes:
    """Undo the octal escapes of /proc/self/mounts (``\\040`` for a space)."""
    if b"\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)


def _read(path: str, limit: int = 1 << 20) -> bytes:
    """A small kernel file, read with two system calls and no Python file object: in a walk of /proc
    that is most of the cost."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if limit <= 4096:  # comm, the start of cmdline, a pidfile: one read is all there is or all we want
            return os.read(fd, limit)
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _alive(p: psutil.Process) -> bool:
    """Still the same process (pid and start time), and not a zombie."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _attempt(read: Callable[[], Any]) -> Any:
    """One figure of a process, or None when it is not ours to read (partial figures, not an error)."""
    try:
        return read()
    except psutil.AccessDenied:
        return None


class HostCollector:
    """Reads the host on each :meth:`collect`; built once per configuration by :func:`make_collector`.

    ``mounts_path``, ``meminfo_path`` and ``proc`` are where it reads the kernel's tables itself (tests
    point them at recorded files); ``fs.statvfs`` is the call it makes for each mount.
    """

    mounts_path = "/proc/self/mounts"
    meminfo_path = "/proc/meminfo"
    proc = "/proc"

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.ctx = ctx
        self.log = ctx.log
        self.services = _parse_services(o["services"])
        self.mount_timeout = float(o["mount_timeout"])
        self.cgroup_root = o["cgroup_root"].rstrip("/") or "/"
        self.systemctl = o["systemctl"]
        self._mount_exclude = _compile(o["mount_points_exclude"])
        self._fstype_exclude = _compile(o["fs_types_exclude"])
        self._disk_exclude = _compile(o["disk_devices_exclude"])
        self._net_exclude = _compile(o["network_devices_exclude"])
        self.fs = StatvfsRunner()
        self._failing: Dict[str, str] = {}
        self._prev_cpu: Optional[Tuple[float, ...]] = None
        self._cpu_fields: Tuple[int, ...] = ()
        self._cpu_labels: list = []
        self._total_fields: Tuple[int, ...] = ()
        self._mounts_raw: Optional[bytes] = None
        self._mounts: list = []
        self._disk_labels: Dict[str, Optional[dict]] = {}
        self._net_labels: Dict[str, Optional[dict]] = {}
        self._success_labels: Dict[str, dict] = {}

    # -- the collection --------------------------------------------------------

    def collect(self) -> list:
        """One reading of the whole host; each part on its own, so one broken source costs only its own series."""
        out: list = []
        parts = [("cpu", self._cpu), ("loadavg", self._load), ("meminfo", self._memory),
                 ("filesystem", self._filesystems), ("diskstats", self._disks), ("netdev", self._network)]
        if self.services:
            parts.append(("services", self._watch_services))
        for part, read in parts:
            ok = 1
            try:
                read(out)
            except Exception as e:
                ok = 0
                self._warn_once(part, f"{type(e).__name__}: {e}", "host collector: cannot read %s: %s",
                                part, e, exc_info=True)
            else:
                self._recovered(part, "host collector: %s readable again", part)
            labels = self._success_labels.get(part)
            if labels is None:
                labels = self._success_labels[part] = {"collector": part}
            out.append(Sample("node_scrape_collector_success", labels, ok))
        return out

    def close(self) -> None:
        self.fs.close()

    # -- logging once ----------------------------------------------------------

    def _warn_once(self, key: str, detail: str, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log a failure when it starts or changes, not on every cycle it lasts."""
        if self._failing.get(key) != detail:
            self._failing[key] = detail
            self.log.warning(message, *args, exc_info=exc_info)

    def _recovered(self, key: str, message: str, *args: Any) -> None:
        if self._failing.pop(key, None) is not None:
            self.log.info(message, *args)

    # -- CPU, load, memory -----------------------------------------------------

    def _cpu(self, out: list) -> None:
        per = psutil.cpu_times(percpu=True)
        if len(per) != len(self._cpu_labels):  # first time, or CPUs came online or went away
            fields = per[0]._fields if per else ()
            self._cpu_fields = tuple(fields.index(m) for m in CPU_MODES if m in fields)
            modes = [fields[i] for i in self._cpu_fields]
            self._cpu_labels = [[{"cpu": str(n), "mode": m} for m in modes] for n in range(len(per))]
        fields = self._cpu_fields
        for times, labels in zip(per, self._cpu_labels):
            for i, lab in zip(fields, labels):
                out.append(Sample("node_cpu_seconds_total", lab, times[i]))

        total = psutil.cpu_times()
        if not self._total_fields:
            self._total_fields = tuple(total._fields.index(m) if m in total._fields else -1 for m in CPU_MODES)
        now = tuple(total[i] if i >= 0 else 0.0 for i in self._total_fields)
        prev, self._prev_cpu = self._prev_cpu, now
        if prev is None:
            return  # nothing to compare with yet: no percentage rather than a made-up one
        delta = [max(a - b, 0.0) for a, b in zip(now, prev)]  # idle and iowait can step back on NO_HZ kernels
        elapsed = sum(delta)
        if elapsed <= 0:
            return  # collected again within one clock tick
        idle, iowait, steal = delta[3], delta[4], delta[7]
        # every delta is >= 0 and they sum to elapsed, so each share is within [0, 100] by construction
        out.append(Sample("host_cpu_usage_percent", {}, (elapsed - idle - iowait) / elapsed * 100))
        out.append(Sample("host_cpu_iowait_percent", {}, iowait / elapsed * 100))
        out.append(Sample("host_cpu_steal_percent", {}, steal / elapsed * 100))

    def _load(self, out: list) -> None:
        one, five, fifteen = os.getloadavg()
        out.append(Sample("node_load1", {}, one))
        out.append(Sample("node_load5", {}, five))
        out.append(Sample("node_load15", {}, fifteen))

    def _memory(self, out: list) -> None:
        with open(self.meminfo_path, "rb") as f:
            data = f.read()
        values: Dict[str, int] = {}
        for line in data.splitlines():
            key, _, rest = line.partition(b":")
            name = MEMINFO.get(key)
            if name is not None:
                values[name] = int(rest.split()[0]) * 1024
        for name in MEMINFO.values():
            if name in values:
                out.append(Sample(name, {}, values[name]))
        total = values.get("node_memory_MemTotal_bytes")
        available = values.get("node_memory_MemAvailable_bytes")
        if total and available is not None:
            out.append(Sample("host_memory_usage_percent", {}, (total - available) / total * 100))

    # -- filesystems -----------------------------------------------------------

    def _mount_table(self) -> list:
        """The reported mounts as (path, labels, mounted read-only), parsed again only when the table changed.

        A mount point mounted over twice is reported once, for the mount on top: the one statvfs sees.
        """
        with open(self.mounts_path, "rb") as f:
            raw = f.read()
        if raw == self._mounts_raw:
            return self._mounts
        by_point: Dict[bytes, tuple] = {}
        for line in raw.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            device, point, fstype = (_unescape(x).decode("utf-8", "replace") for x in fields[:3])
            if self._fstype_exclude is not None and self._fstype_exclude.search(fstype):
                continue
            if self._mount_exclude is not None and self._mount_exclude.search(point):
                continue
            path = _unescape(fields[1])
            by_point.pop(path, None)  # keep the order of the table, with the later mount's place
            by_point[path] = (path, {"device": device, "fstype": fstype, "mountpoint": point},
                              b"ro" in fields[3].split(b","))
        self._mounts_raw, self._mounts = raw, list(by_point.values())
        return self._mounts

    def _filesystems(self, out: list) -> None:
        mounts = self._mount_table()
        if not mounts:
            return
        budget = max(self.ctx.remaining() / 2, self.mount_timeout)
        results = self.fs.run([m[0] for m in mounts], self.mount_timeout, budget)
        for (_path, labels, ro), st in zip(mounts, results):
            if st is None:
                continue  # not reached in this collection's time: asked next time
            if isinstance(st, BaseException):
                key = "mount " + labels["mountpoint"]
                detail = "hangs" if st is STUCK else f"{type(st).__name__}: {st}"
                self._warn_once(key, detail, "host collector: statvfs(%s) %s", labels["mountpoint"],
                                f"did not return within {self.mount_timeout:g}s; not asked again until it does"
                                if st is STUCK else f"failed: {st}")
                out.append(Sample("node_filesystem_device_error", labels, 1))
                continue
            if self._failing:
                self._recovered("mount " + labels["mountpoint"], "host collector: statvfs(%s) works again",
                                labels["mountpoint"])
            size = st.f_frsize or st.f_bsize
            out.append(Sample("node_filesystem_size_bytes", labels, st.f_blocks * size))
            out.append(Sample("node_filesystem_avail_bytes", labels, st.f_bavail * size))
            out.append(Sample("node_filesystem_free_bytes", labels, st.f_bfree * size))
            out.append(Sample("node_filesystem_files", labels, st.f_files))
            out.append(Sample("node_filesystem_files_free", labels, st.f_ffree))
            out.append(Sample("node_filesystem_readonly", labels, 1 if ro or st.f_flag & os.ST_RDONLY else 0))
            out.append(Sample("node_filesystem_device_error", labels, 0))

    # -- disks and network -----------------------------------------------------

    @staticmethod
    def _device_labels(names: Iterable[str], cache: Dict[str, Optional[dict]],
                       exclude: Optional[re.Pattern]) -> Dict[str, Optional[dict]]:
        """Labels per device, ``None`` for an excluded one; decided once per device name, and only for the
        devices there now (so that containers' veth churn does not grow it)."""
        new: Dict[str, Optional[dict]] = {}
        for name in names:
            if name in cache:
                new[name] = cache[name]
            else:
                new[name] = None if exclude is not None and exclude.search(name) else {"device": name}
        return new

    def _disks(self, out: list) -> None:
        counters = psutil.disk_io_counters(perdisk=True, nowrap=False) or {}
        self._disk_labels = labels = self._device_labels(counters, self._disk_labels, self._disk_exclude)
        for name, c in counters.items():
            lab = labels[name]
            if lab is None:
                continue
            out.append(Sample("node_disk_reads_completed_total", lab, c.read_count))
            out.append(Sample("node_disk_writes_completed_total", lab, c.write_count))
            out.append(Sample("node_disk_read_bytes_total", lab, c.read_bytes))
            out.append(Sample("node_disk_written_bytes_total", lab, c.write_bytes))
            out.append(Sample("node_disk_io_time_seconds_total", lab, c.busy_time / 1000.0))

    def _network(self, out: list) -> None:
        counters = psutil.net_io_counters(pernic=True, nowrap=False) or {}
        self._net_labels = labels = self._device_labels(counters, self._net_labels, self._net_exclude)
        for name, c in counters.items():
            lab = labels[name]
            if lab is None:
                continue
            out.append(Sample("node_network_receive_bytes_total", lab, c.bytes_recv))
            out.append(Sample("node_network_transmit_bytes_total", lab, c.bytes_sent))
            out.append(Sample("node_network_receive_packets_total", lab, c.packets_recv))
            out.append(Sample("node_network_transmit_packets_total", lab, c.packets_sent))
            out.append(Sample("node_network_receive_errs_total", lab, c.errin))
            out.append(Sample("node_network_transmit_errs_total", lab, c.errout))
            out.append(Sample("node_network_receive_drop_total", lab, c.dropin))
            out.append(Sample("node_network_transmit_drop_total", lab, c.dropout))

    # -- services --------------------------------------------------------------

    def _watch_services(self, out: list) -> None:
        units = [s for s in self.services if s.kind == "unit"]
        props = self._unit_properties(units) if units else None
        failed = []
        for svc in self.services:
            try:
                if svc.kind == "unit":
                    up, procs, restarts = self._unit(svc, props.get(svc.target) if props is not None else None)
                else:
                    up, procs, restarts = self._by_main_process(svc)
                self._figures(svc, up, procs, restarts, out)
            except Exception as e:  # a bug here must not cost the other services their series
                failed.append(svc.name)
                self._warn_once("service " + svc.name, f"{type(e).__name__}: {e}",
                                "host collector: cannot read service %s: %s", svc.name, e, exc_info=True)
            else:
                self._recovered("service " + svc.name, "host collector: service %s readable again", svc.name)
        if failed:
            raise RuntimeError(f"cannot read service(s) {', '.join(failed)}")

    def _figures(self, svc: Service, up: bool, procs: Sequence[psutil.Process], restarts: Optional[int],
                 out: list) -> None:
        """Sum what can be read of the service's processes: one that exits meanwhile is left out, a figure
        that is not ours to read (another user's fds when not root) is left out of its sum; a sum nobody
        could give is not reported at all, rather than reported as 0."""
        count, cpu, rss, threads, fds = 0, None, None, None, None
        for p in procs:
            try:
                with p.oneshot():
                    if p.status() == psutil.STATUS_ZOMBIE:
                        continue
                    c = _attempt(p.cpu_times)
                    m = _attempt(p.memory_info)
                    t = _attempt(p.num_threads)
                    f = _attempt(p.num_fds)
            except psutil.NoSuchProcess:
                continue
            count += 1
            if c is not None:
                cpu = (cpu or 0.0) + c.user + c.system
            if m is not None:
                rss = (rss or 0) + m.rss
            if t is not None:
                threads = (threads or 0) + t
            if f is not None:
                fds = (fds or 0) + f
        lab = svc.labels
        out.append(Sample("service_up", lab, 1 if up else 0))
        out.append(Sample("service_processes", lab, count))
        for name, value in (("service_cpu_seconds_total", cpu), ("service_resident_memory_bytes", rss),
                            ("service_threads", threads), ("service_open_fds", fds)):
            if value is not None:
                out.append(Sample(name, lab, value))
        if restarts is not None:
            out.append(Sample("service_restarts_total", lab, restarts))

    def _processes(self, svc: Service, pids: Iterable[int]) -> list:
        """psutil.Process objects for ``pids``, reusing last collection's; values are read afresh each time."""
        cache, new = svc.procs, {}
        for pid in pids:
            p = cache.get(pid)
            if p is None:
                try:
                    p = psutil.Process(pid)
                except psutil.Error:
                    continue
            new[pid] = p
        svc.procs = new
        return list(new.values())

    # process and pidfile services

    def _by_main_process(self, svc: Service) -> Tuple[bool, list, int]:
        main = self._main_process(svc)
        svc.main = main
        if main is None:
            svc.procs = {}
            return False, [], svc.restarts
        ident = (main.pid, main.create_time())
        if svc.seen is not None and ident != svc.seen:
            svc.restarts += 1
        svc.seen = ident
        svc.procs[main.pid] = main
        return True, self._processes(svc, [main.pid, *self._descendants(main.pid)]), svc.restarts

    def _main_process(self, svc: Service) -> Optional[psutil.Process]:
        cached = svc.main
        if svc.kind == "pidfile":
            pid = self._read_pidfile(svc)
            if pid is None:
                return None
            if cached is not None and cached.pid == pid and _alive(cached):
                return cached
            try:
                p = psutil.Process(pid)
                return None if p.status() == psutil.STATUS_ZOMBIE else p
            except psutil.Error:
                return None
        if cached is not None and _alive(cached):
            return cached
        return self._find_by_name(svc.target)

    def _read_pidfile(self, svc: Service) -> Optional[int]:
        try:
            first = _read(svc.target, 64).split()
        except OSError as e:
            self._warn_once("pidfile " + svc.name, type(e).__name__,
                            "host collector: service %s: cannot read pidfile: %s", svc.name, e)
            return None
        if not first or not first[0].isdigit() or int(first[0]) <= 0:
            self._warn_once("pidfile " + svc.name, "garbled",
                            "host collector: service %s: pidfile %s holds no pid", svc.name, svc.target)
            return None
        self._recovered("pidfile " + svc.name, "host collector: service %s: pidfile readable again", svc.name)
        return int(first[0])

    def _find_by_name(self, name: str) -> Optional[psutil.Process]:
        """The oldest live process called ``name`` (its comm, as psutil's name() has it, or the basename
        of its argv[0]: psutil's name() is one of the two). A walk of /proc reading two small files per
        process, because it runs on every collection while the service is down."""
        want = name.encode()
        matches = []
        try:
            entries = os.listdir(self.proc)
        except OSError:
            return None
        for entry in entries:
            if not entry.isdigit():
                continue
            base = f"{self.proc}/{entry}/"
            try:
                if _read(base + "comm", 64).rstrip(b"\n") != want:
                    argv0 = _read(base + "cmdline", 4096).split(b"\0", 1)[0]
                    if not argv0 or os.path.basename(argv0) != want:
                        continue
            except OSError:
                continue
            matches.append(int(entry))
        best, best_time = None, 0.0
        for pid in matches:
            try:
                p = psutil.Process(pid)
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                started = p.create_time()
            except psutil.Error:
                continue
            if best is None or started < best_time:
                best, best_time = p, started
        return best

    def _descendants(self, pid: int) -> list:
        """Children, grandchildren... from the kernel's per-thread children lists (main threads only)."""
        out: list = []
        stack, seen = [pid], {pid}
        while stack and len(out) < _MAX_SERVICE_PROCESSES:
            p = stack.pop()
            try:
                data = _read(f"{self.proc}/{p}/task/{p}/children")
            except OSError:
                continue
            for token in data.split():
                child = int(token)
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    stack.append(child)
        return out

    # unit services

    def _unit_properties(self, units: Sequence[Service]) -> Optional[Dict[str, Dict[str, str]]]:
        """Ask systemctl about all the units at once (one command per collection, not one per unit).

        ``None`` when it cannot say: the units are then judged by their cgroups alone, and that is
        logged once, not on every cycle.
        """
        argv = [self.systemctl, "show", "--property=MainPID,NRestarts,ActiveState,ControlGroup",
                *[u.target for u in units]]
        try:
            result = self.ctx.run(argv, timeout=max(min(2.0, self.ctx.timeout / 2), 0.1))
        except CommandNotFound as e:
            self._warn_once("systemctl", "missing", "host collector: %s; units are judged by their cgroups alone",
                            e)
            return None
        except CommandTimeout as e:
            result = e.result
        if not result.ok:
            self._warn_once("systemctl", "failed", "host collector: %s; units are judged by their cgroups alone",
                            result.describe())
            return None
        blocks = [b for b in re.split(r"\n\s*\n", result.stdout.strip()) if b.strip()]
        if len(blocks) != len(units):
            self._warn_once("systemctl", "garbled", "host collector: systemctl show printed %d blocks for %d "
                            "units; units are judged by their cgroups alone", len(blocks), len(units))
            return None
        self._recovered("systemctl", "host collector: systemctl answers again")
        out = {}
        for unit, block in zip(units, blocks):
            props = {}
            for line in block.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    props[key.strip()] = value.strip()
            out[unit.target] = props
        return out

    def _unit(self, svc: Service, props: Optional[Mapping[str, str]]) -> Tuple[bool, list, Optional[int]]:
        pids = self._cgroup_pids(svc, props.get("ControlGroup", "") if props else "")
        if props is None:
            return bool(pids), self._processes(svc, pids or ()), None
        main = props.get("MainPID", "")
        if pids is None and main.isdigit() and int(main) > 0:
            pids = [int(main)]  # no cgroup where we look: the main process at least
        restarts = props.get("NRestarts", "")
        return (props.get("ActiveState") in _UP_STATES, self._processes(svc, pids or ()),
                int(restarts) if restarts.isdigit() else None)

    def _cgroup_pids(self, svc: Service, control_group: str) -> Optional[list]:
        """The pids of a unit's cgroup and the cgroups below it (a unit with Delegate= puts its processes
        there), or None when the unit has no cgroup where we look.

        Looked for in cgroup v2 (``<root>/<cgroup>``), in the v2 hierarchy of a hybrid system
        (``<root>/unified/<cgroup>``) and in v1's name=systemd hierarchy (``<root>/systemd/<cgroup>``);
        the cgroup is systemd's ControlGroup when systemctl gave one, else ``system.slice/<unit>``.
        """
        rel = control_group.strip("/") if control_group else f"system.slice/{svc.target}"
        root = self.cgroup_root
        candidates = [f"{root}/{rel}", f"{root}/unified/{rel}", f"{root}/systemd/{rel}"]
        if svc.cgroup_dir in candidates:  # the one that worked last time first
            candidates.remove(svc.cgroup_dir)
            candidates.insert(0, svc.cgroup_dir)
        for top in candidates:
            pids = _read_cgroup(top)
            if pids is not None:
                svc.cgroup_dir = top
                return pids
        return None


def _read_cgroup(top: str) -> Optional[list]:
    """The pids in ``top``'s cgroup.procs and in those of the cgroups below it; None when there is none."""
    try:
        data = _read(top + "/cgroup.procs")
    except OSError:
        return None
    pids = [int(x) for x in data.split() if x.isdigit()]
    stack = [top]
    while stack and len(pids) < _MAX_SERVICE_PROCESSES:
        d = stack.pop()
        try:
            with os.scandir(d) as entries:
                subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for sub in subdirs:
            try:
                pids.extend(int(x) for x in _read(sub + "/cgroup.procs").split() if x.isdigit())
            except OSError:
                continue
            stack.append(sub)
    return pids


def make_collector(ctx: PluginContext) -> HostCollector:
    """The factory: checks what the declared option types cannot (one way to find each service)."""
    return HostCollector(ctx)


@hookimpl
def npuagent_collector_types() -> list:
    """The one collector type of this plugin, enabled by default: every host wants these series."""
    return [CollectorType(
        name="host",
        factory=make_collector,
        options=OPTIONS,
        help="CPU, load, memory, filesystems, disks and network, named as node_exporter names them; "
             "and the services listed in `services`.",
        interval=10.0,
        timeout=5.0,
        enabled_by_default=True,
        metrics=METRICS,
    )]


__all__ = ["HostCollector", "StatvfsRunner", "make_collector", "npuagent_collector_types"]
