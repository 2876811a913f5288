"""Every Ascend chip read in-process through libdcmi.so (ctypes), instead of by running npu-smi.

Why DCMI: a 16-chip sweep through npu-smi costs seconds to tens of seconds on a busy host,
forks (which can wedge a process that forks workers at the same time), and learns of a
device fault only at the next poll. DCMI answers in microseconds per call, and the driver
can call us back the moment it raises a fault (:meth:`Dcmi.read` and ``on_event``).

Why the care below (see ``shared/reference/dcmi.md``):

* Loading: ``library`` from the configuration first, then the usual places
  (:data:`LIBRARY_PATHS`), then ``ctypes.util.find_library``. Nothing loads:
  :class:`DcmiUnavailable`, so the collector falls back to npu-smi.
* ``dcmi_init`` must run once per process (calls before it answer -8012), so it is guarded
  per library file at module level: a collector made anew by a reload shares the
  initialised library, and a failed init is retried at the next read (a device held by
  another container may be released).
* Signatures and structs are those of the header, bound on each function
  (``argtypes``/``restype``); a function the installed driver does not export is
  "unsupported here", recorded in :attr:`Dcmi.unsupported` and skipped, never an error.
  So is a reading the chip refuses with -8255 (not supported) or -8013 (not in a
  container): it is not asked again for that chip. Every other failure becomes a line in
  :attr:`Snapshot.warnings` with the code's name and meaning (:mod:`.errors`), and the
  other readings and chips are still read.
* DCMI is not thread-safe and has anti-flooding protection, and a call can block for a
  sampling window or, on a dropped card, much longer. So every call runs on one worker
  thread per :class:`Dcmi`, under a lock per library shared by all instances;
  :meth:`Dcmi.read` hands the whole collection to the worker and waits at most its
  timeout. A call that does not return is reported by name (:class:`DcmiStalled`), and
  reads are refused at once until it returns: stuck calls are never piled up.
* Fault events: ``dcmi_subscribe_fault_event`` may be called only once per process, so
  the subscription (all chips: card -1, device -1) and its ctypes callback belong to the
  library, not to an instance, and the callback is kept referenced for the life of the
  process. Each event becomes an :class:`npuagent.model.Event` handed to every open
  :class:`Dcmi`: kept in a bounded queue (:meth:`Dcmi.drain_events`) and passed to
  ``on_event`` at once, on the driver's thread.

Units: temperature °C, power 0.1 W (converted to W), memory MB that are MiB (converted to
bytes), utilization %, frequency MHz. Values DCMI marks invalid (temperature below
-275 °C, utilization above 100 %) are dropped, as Huawei's npu-exporter drops them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Set, Tuple

from npuagent.model import Event

from . import errors
from .model import MIB, Chip, Snapshot

__all__ = [
    "LIBRARY_PATHS", "STRUCTS", "Dcmi", "DcmiError", "DcmiStalled", "DcmiUnavailable",
]

log = logging.getLogger("npuagent.ascend.dcmi")

#: where libdcmi.so is installed by the Ascend driver packages, in the order tried
LIBRARY_PATHS = (
    "/usr/local/dcmi/libdcmi.so",
    "/usr/local/Ascend/driver/lib64/driver/libdcmi.so",
    "/usr/local/Ascend/driver/lib64/libdcmi.so",
)

DCMI_OK = 0
NOT_READY = -8012
NOT_SUPPORT_IN_CONTAINER = -8013
NOT_SUPPORT = -8255
#: codes that mean "this chip or this place cannot answer that": ask no more
UNSUPPORTED_CODES = (NOT_SUPPORT, NOT_SUPPORT_IN_CONTAINER)

# dcmi_get_device_utilization_rate input types (official header defines)
UTIL_DDR, UTIL_AICORE, UTIL_AICPU, UTIL_HBM, UTIL_HBM_BANDWIDTH, UTIL_VECTOR, UTIL_NPU = 1, 2, 3, 6, 10, 12, 13
# enum dcmi_freq_type
FREQ_AICORE_CURRENT = 7
# enum dcmi_device_type (for dcmi_get_device_ecc_info)
DEVICE_TYPE_DDR, DEVICE_TYPE_HBM = 0, 2
# enum dcmi_unit_type
NPU_TYPE = 0
# enum dcmi_event_type
DCMI_DMS_FAULT_EVENT = 0

#: dcmi_get_device_health, as npu-smi words it (model.HEALTH's keys); anything else is UNKNOWN
HEALTH_TEXT = {0: "OK", 1: "Warning", 2: "Alarm", 3: "Critical"}
#: enum dcmi_rdfx_detect_result, for npu_network_health's `health` label
NETWORK_TEXT = {0: "OK", 1: "SOCK_FAIL", 2: "RECV_TIMEOUT", 3: "UNREACH", 4: "TIME_EXCEEDED", 5: "FAULT",
                6: "INIT", 7: "THREAD_ERR", 8: "IP_SET"}
#: struct dcmi_dms_fault_event.severity
SEVERITY_TEXT = {0: "warning", 1: "minor", 2: "major", 3: "critical"}
#: struct dcmi_dms_fault_event.assertion
ASSERTION_TEXT = {0: "recovered", 1: "raised", 2: "once"}

#: how many error codes dcmi_get_device_errorcode_v2 may give (the exporter's buffer)
MAX_ERROR_CODES = 128
#: how many card ids dcmi_get_card_list may give
MAX_CARDS = 256
#: fault events kept for drain_events(); older ones are dropped when nobody drains
EVENT_QUEUE_LEN = 1024

MAX_CHIP_NAME_LEN = 32
DCMI_MAX_EVENT_NAME_LENGTH = 256
DCMI_MAX_EVENT_DATA_LENGTH = 32
DCMI_MAX_EVENT_RESV_LENGTH = 32


# ---------------------------------------------------------------------------------------------
# structs, as the header lays them out (sizes on LP64 as dcmi.md gives them)
# ---------------------------------------------------------------------------------------------


class DcmiChipInfo(ctypes.Structure):
    """struct dcmi_chip_info (100 bytes)."""

    _fields_ = [
        ("chip_type", ctypes.c_ubyte * MAX_CHIP_NAME_LEN),
        ("chip_name", ctypes.c_ubyte * MAX_CHIP_NAME_LEN),
        ("chip_ver", ctypes.c_ubyte * MAX_CHIP_NAME_LEN),
        ("aicore_cnt", ctypes.c_uint),
    ]


class DcmiPcieInfoAll(ctypes.Structure):
    """struct dcmi_pcie_info_all (64 bytes)."""

    _fields_ = [
        ("venderid", ctypes.c_uint),
        ("subvenderid", ctypes.c_uint),
        ("deviceid", ctypes.c_uint),
        ("subdeviceid", ctypes.c_uint),
        ("domain", ctypes.c_int),
        ("bdf_busid", ctypes.c_uint),
        ("bdf_deviceid", ctypes.c_uint),
        ("bdf_funcid", ctypes.c_uint),
        ("reserve", ctypes.c_ubyte * 32),
    ]


class DcmiEccInfo(ctypes.Structure):
    """struct dcmi_ecc_info (36 bytes)."""

    _fields_ = [
        ("enable_flag", ctypes.c_int),
        ("single_bit_error_cnt", ctypes.c_uint),
        ("double_bit_error_cnt", ctypes.c_uint),
        ("total_single_bit_error_cnt", ctypes.c_uint),
        ("total_double_bit_error_cnt", ctypes.c_uint),
        ("single_bit_isolated_pages_cnt", ctypes.c_uint),
        ("double_bit_isolated_pages_cnt", ctypes.c_uint),
        ("single_bit_next_isolated_pages_cnt", ctypes.c_uint),
        ("double_bit_next_isolated_pages_cnt", ctypes.c_uint),
    ]


class DcmiHbmInfo(ctypes.Structure):
    """struct dcmi_hbm_info (32 bytes: 4 bytes of padding after freq). Sizes in MB (MiB)."""

    _fields_ = [
        ("memory_size", ctypes.c_ulonglong),
        ("freq", ctypes.c_uint),
        ("memory_usage", ctypes.c_ulonglong),
        ("temp", ctypes.c_int),
        ("bandwith_util_rate", ctypes.c_uint),  # sic
    ]


class DcmiGetMemoryInfo(ctypes.Structure):
    """struct dcmi_get_memory_info_stru (112 bytes on LP64; the header's comment says 96)."""

    _fields_ = [
        ("memory_size", ctypes.c_ulonglong),
        ("memory_available", ctypes.c_ulonglong),
        ("freq", ctypes.c_uint),
        ("hugepagesize", ctypes.c_ulong),
        ("hugepages_total", ctypes.c_ulong),
        ("hugepages_free", ctypes.c_ulong),
        ("utiliza", ctypes.c_uint),
        ("reserve", ctypes.c_ubyte * 60),
    ]


class DcmiMemoryInfo(ctypes.Structure):
    """struct dcmi_memory_info_stru (16 bytes), the V1 memory query."""

    _fields_ = [
        ("memory_size", ctypes.c_ulonglong),
        ("freq", ctypes.c_uint),
        ("utiliza", ctypes.c_uint),
    ]


class DcmiEventFilter(ctypes.Structure):
    """struct dcmi_event_filter (48 bytes), passed by value; all zero = every event."""

    _fields_ = [
        ("filter_flag", ctypes.c_ulonglong),
        ("event_id", ctypes.c_uint),
        ("severity", ctypes.c_ubyte),
        ("node_type", ctypes.c_ubyte),
        ("resv", ctypes.c_ubyte * DCMI_MAX_EVENT_RESV_LENGTH),
    ]


class DcmiDmsFaultEvent(ctypes.Structure):
    """struct dcmi_dms_fault_event (352 bytes). ``deviceid`` is the chip's logic id."""

    _fields_ = [
        ("event_id", ctypes.c_uint),
        ("deviceid", ctypes.c_ushort),
        ("node_type", ctypes.c_ubyte),
        ("node_id", ctypes.c_ubyte),
        ("sub_node_type", ctypes.c_ubyte),
        ("sub_node_id", ctypes.c_ubyte),
        ("severity", ctypes.c_ubyte),
        ("assertion", ctypes.c_ubyte),
        ("event_serial_num", ctypes.c_int),
        ("notify_serial_num", ctypes.c_int),
        ("alarm_raised_time", ctypes.c_ulonglong),
        ("event_name", ctypes.c_char * DCMI_MAX_EVENT_NAME_LENGTH),
        ("additional_info", ctypes.c_char * DCMI_MAX_EVENT_DATA_LENGTH),
        ("os_id", ctypes.c_ubyte),
        ("resv", ctypes.c_ubyte * (DCMI_MAX_EVENT_RESV_LENGTH - 1)),
    ]


class _DcmiEventUnion(ctypes.Union):
    _fields_ = [("dms_event", DcmiDmsFaultEvent)]


class DcmiEvent(ctypes.Structure):
    """struct dcmi_event (360 bytes): an enum dcmi_event_type, then the event."""

    _fields_ = [("type", ctypes.c_int), ("event_t", _DcmiEventUnion)]


#: the header's struct names -> their ctypes mirrors (tests compare them with the C compiler's layout)
STRUCTS: Dict[str, Any] = {
    "dcmi_chip_info": DcmiChipInfo,
    "dcmi_pcie_info_all": DcmiPcieInfoAll,
    "dcmi_ecc_info": DcmiEccInfo,
    "dcmi_hbm_info": DcmiHbmInfo,
    "dcmi_get_memory_info_stru": DcmiGetMemoryInfo,
    "dcmi_memory_info_stru": DcmiMemoryInfo,
    "dcmi_event_filter": DcmiEventFilter,
    "dcmi_dms_fault_event": DcmiDmsFaultEvent,
    "dcmi_event": DcmiEvent,
}

#: typedef void (*dcmi_fault_event_callback)(struct dcmi_event *event);
FAULT_EVENT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.POINTER(DcmiEvent))

_P = ctypes.POINTER
_int, _uint = ctypes.c_int, ctypes.c_uint

#: every function bound: name -> argtypes (all return int). Enums are passed as int.
SIGNATURES: Dict[str, Tuple[Any, ...]] = {
    "dcmi_init": (),
    "dcmi_get_dcmi_version": (ctypes.c_char_p, _uint),
    "dcmi_get_driver_version": (ctypes.c_char_p, _uint),
    "dcmi_get_card_list": (_P(_int), _P(_int), _int),
    "dcmi_get_device_num_in_card": (_int, _P(_int)),
    "dcmi_get_device_id_in_card": (_int, _P(_int), _P(_int), _P(_int)),
    "dcmi_get_device_type": (_int, _int, _P(_int)),
    "dcmi_get_device_logic_id": (_P(_int), _int, _int),
    "dcmi_get_device_phyid_from_logicid": (_uint, _P(_uint)),
    "dcmi_get_device_chip_info": (_int, _int, _P(DcmiChipInfo)),
    "dcmi_get_device_pcie_info_v2": (_int, _int, _P(DcmiPcieInfoAll)),
    "dcmi_get_device_health": (_int, _int, _P(_uint)),
    "dcmi_get_device_errorcode_v2": (_int, _int, _P(_int), _P(_uint), _uint),
    "dcmi_get_device_temperature": (_int, _int, _P(_int)),
    "dcmi_get_device_power_info": (_int, _int, _P(_int)),
    "dcmi_get_device_utilization_rate": (_int, _int, _int, _P(_uint)),
    "dcmi_get_device_frequency": (_int, _int, _int, _P(_uint)),
    "dcmi_get_device_hbm_info": (_int, _int, _P(DcmiHbmInfo)),
    "dcmi_get_device_memory_info_v3": (_int, _int, _P(DcmiGetMemoryInfo)),
    "dcmi_get_memory_info": (_int, _int, _P(DcmiMemoryInfo)),
    "dcmi_get_device_ecc_info": (_int, _int, _int, _P(DcmiEccInfo)),
    "dcmi_get_device_network_health": (_int, _int, _P(_int)),
    # the official 4-argument form (mind-cluster's header hides the handler behind a cgo wrapper)
    "dcmi_subscribe_fault_event": (_int, _int, DcmiEventFilter, FAULT_EVENT_CALLBACK),
}


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


class DcmiUnavailable(Exception):
    """libdcmi.so cannot be loaded here (not installed, not mounted, a dependency missing)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DcmiError(Exception):
    """DCMI is there but does not work: dcmi_init or the card list failed (the message says why)."""

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


class DcmiStalled(DcmiError):
    """A DCMI call has not returned in time; reads are refused until it does.

    A subclass of :class:`DcmiError`, so a collector in ``auto`` mode reads npu-smi
    (with its subprocess timeout) while the library is stuck, and DCMI again once it is not.
    """

    def __init__(self, function: str, seconds: float) -> None:
        super().__init__(f"{function} has not returned after {seconds:.1f}s; DCMI reads are refused until it does")
        #: the DCMI function that is stuck
        self.function = function
        self.seconds = seconds


def _failure(function: str, code: int) -> str:
    return f"{function} failed ({code} {errors.name(code)}): {errors.describe(code)}"


# ---------------------------------------------------------------------------------------------
# the library, shared by every Dcmi of the process
# ---------------------------------------------------------------------------------------------


class ChipIds(NamedTuple):
    """How DCMI numbers one chip: card (npu-smi's NPU ID), device in card (Chip ID), logic and phy ids."""

    card: int
    device: int
    logic: Optional[int]
    phy: Optional[int]


class _Library:
    """One loaded libdcmi.so and what must happen once per process for it: dcmi_init, the
    fault subscription and its callback. Every call into it holds :attr:`lock`."""

    def __init__(self, path: str, cdll: ctypes.CDLL) -> None:
        self.path = path
        self.cdll = cdll
        self.functions: Dict[str, Any] = {}
        #: functions the library does not export
        self.missing: Set[str] = set()
        for name, argtypes in SIGNATURES.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                self.missing.add(name)
                continue
            fn.argtypes = list(argtypes)
            fn.restype = ctypes.c_int
            self.functions[name] = fn
        self.lock = threading.Lock()
        #: the function being called now, and since when (monotonic): what a stall names
        self.current: Optional[str] = None
        self.since = 0.0
        self.initialized = False
        #: None: not tried yet; True: subscribed; False: cannot be (missing or unsupported)
        self.subscribed: Optional[bool] = None
        self.callback: Any = None  # the CFUNCTYPE object: referenced as long as the process lives
        #: logic id -> (card, device), for the labels of fault events
        self.by_logic: Dict[int, Tuple[int, int]] = {}
        self.sinks: weakref.WeakSet = weakref.WeakSet()

    def call(self, name: str, *args: Any) -> int:
        """Call ``name``; the caller holds :attr:`lock` and has checked that it exists."""
        self.current, self.since = name, time.monotonic()
        try:
            return self.functions[name](*args)
        finally:
            self.current = None

    def on_fault(self, pointer: Any) -> None:
        """The subscription's callback, on the driver's thread: never raise into C."""
        try:
            event = self._event(pointer.contents)
            if event is None:
                return
            for sink in list(self.sinks):
                sink._deliver(event)
        except Exception:
            log.exception("DCMI fault event could not be handled")

    def _event(self, raw: DcmiEvent) -> Optional[Event]:
        if raw.type != DCMI_DMS_FAULT_EVENT:
            return None
        ev = raw.event_t.dms_event
        card_dev = self.by_logic.get(ev.deviceid)
        code = f"{ev.event_id:#x}"
        fault_level, fault_describe = _fault_table()
        labels = {
            "npu_id": "" if card_dev is None else str(card_dev[0]),
            "chip_id": "" if card_dev is None else str(card_dev[1]),
            "device_id": str(ev.deviceid),
            "code": code,
            "level": fault_level(ev.event_id) if fault_level else "unknown",
            "severity": SEVERITY_TEXT.get(ev.severity, str(ev.severity)),
            "assertion": ASSERTION_TEXT.get(ev.assertion, str(ev.assertion)),
        }
        # as FaultTracker words the same fault, then what the driver adds
        words = [fault_describe(ev.event_id) if fault_describe else f"fault code {code}"]
        words += [w for w in (_text(ev.event_name), _text(ev.additional_info)) if w]
        message = "; ".join(words)
        kind = "device_fault_recovered" if ev.assertion == 0 else "device_fault"
        return Event(kind, labels, message, time.time())


def _fault_table() -> Tuple[Optional[Callable[[int], str]], Optional[Callable[[int], str]]]:
    """The fault-code table's level and description functions, where that module is there."""
    try:
        from . import faults
    except Exception:  # another package part, optional here: the event goes out without it
        return None, None
    return getattr(faults, "level", None), getattr(faults, "describe", None)


def _text(raw: Any) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace").strip()


_LIBRARIES: Dict[str, _Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _candidates(path: Optional[str]) -> List[str]:
    names = [path] if path else []
    names += list(LIBRARY_PATHS)
    found = ctypes.util.find_library("dcmi")
    if found:
        names.append(found)
    names.append("libdcmi.so")  # whatever LD_LIBRARY_PATH and ld.so.cache resolve
    return list(dict.fromkeys(names))


def _load(path: Optional[str]) -> _Library:
    """The configured path, then the usual ones, then the loader's search; loaded once per file."""
    tried: List[str] = []
    for name in _candidates(path):
        if os.sep in name and not os.path.exists(name):
            tried.append(f"{name}: no such file")
            continue
        key = os.path.realpath(name) if os.sep in name else name
        with _LIBRARIES_LOCK:
            lib = _LIBRARIES.get(key)
            if lib is not None:
                return lib
            try:
                cdll = ctypes.CDLL(name)
            except OSError as e:
                tried.append(f"{name}: {e}")
                continue
            lib = _LIBRARIES[key] = _Library(name, cdll)
        if path and name != path:
            log.warning("DCMI library %s did not load; using %s", path, name)
        return lib
    hint = ("; libdcmi.so needs the driver's libraries: add /usr/local/Ascend/driver/lib64 and its common/ "
            "and driver/ directories to LD_LIBRARY_PATH (in a container, mount /usr/local/dcmi and "
            "/usr/local/Ascend/driver)")
    raise DcmiUnavailable("libdcmi.so not loadable: " + "; ".join(tried) + hint)


# ---------------------------------------------------------------------------------------------
# the binding
# ---------------------------------------------------------------------------------------------


class _Job:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None


class _Static:
    """What does not change while the driver runs, read once per chip."""

    def __init__(self) -> None:
        self.logic: Optional[int] = None
        self.phy: Optional[int] = None
        self.name: Optional[str] = None
        self.bus_id: Optional[str] = None


class Dcmi:
    """Reads every Ascend chip through libdcmi.so, on a worker thread of its own.

    :param path: libdcmi.so to load first ("" or None: the usual places).
    :param on_event: called with each :class:`~npuagent.model.Event` of a fault the driver
        reports, at once and on the driver's thread (keep it short; it must not call DCMI).
    :raises DcmiUnavailable: no libdcmi.so loads.
    """

    def __init__(self, path: Optional[str] = None, on_event: Optional[Callable[[Event], Any]] = None) -> None:
        self._lib = _load(path)
        #: the file that was loaded
        self.library_path: str = self._lib.path
        #: functions this driver does not export, and readings the chips refuse (-8255, -8013):
        #: "dcmi_get_device_utilization_rate(13)" for one input type
        self.unsupported: Set[str] = set(self._lib.missing)
        #: (card, device) -> ids, as of the last read
        self.topology: Dict[Tuple[int, int], ChipIds] = {}
        self.on_event = on_event
        self._events: Deque[Event] = deque(maxlen=EVENT_QUEUE_LEN)
        self._refused: Set[Tuple[str, int, int]] = set()  # (reading, card, device) the chip does not support
        self._static: Dict[Tuple[int, int], _Static] = {}
        self._chips_of: Dict[int, List[int]] = {}  # card -> its NPU device ids, as last listed
        self._versions: Optional[Tuple[str, str]] = None
        self._jobs: queue.Queue = queue.Queue()
        self._job: Optional[_Job] = None
        self._read_lock = threading.Lock()
        self._closed = False
        self._lib.sinks.add(self)
        self._thread = threading.Thread(target=self._work, name="npuagent-dcmi", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------

    def read(self, timeout: float) -> Snapshot:
        """Every chip's readings, collected on the worker within ``timeout`` seconds.

        :raises DcmiError: dcmi_init failed, or no card could be listed (the message says why).
        :raises DcmiStalled: a call did not return in time, or one from an earlier read still has not.
        """
        with self._read_lock:
            if self._closed:
                raise DcmiError("this DCMI reader is closed")
            job = self._job
            if job is not None and not job.done.is_set():
                raise self._stalled()
            job = self._job = _Job(self._collect)
            self._jobs.put(job)
            if not job.done.wait(max(timeout, 0.0)):
                raise self._stalled()
            self._job = None
        if job.error is not None:
            raise job.error
        return job.result

    def drain_events(self) -> List[Event]:
        """The fault events received since the last drain (also given to ``on_event`` as they came)."""
        out = []
        while True:
            try:
                out.append(self._events.popleft())
            except IndexError:
                return out

    def close(self) -> None:
        """Stop the worker (once its current call returns) and receive no more events."""
        self._closed = True
        self._lib.sinks.discard(self)
        self._jobs.put(None)
        job = self._job
        if job is None or job.done.is_set():
            self._thread.join(timeout=1.0)

    def __enter__(self) -> Dcmi:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                with self._lib.lock:
                    job.result = job.fn()
            except BaseException as e:  # handed to the reader, who raises it
                job.error = e
            finally:
                job.done.set()

    def _stalled(self) -> DcmiStalled:
        lib = self._lib
        function, since = lib.current, lib.since
        if function is None:
            return DcmiStalled("the DCMI collection", 0.0)
        return DcmiStalled(function, time.monotonic() - since)

    def _deliver(self, event: Event) -> None:
        """From the driver's thread: queue the event and wake whoever wants it now."""
        self._events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event failed for a DCMI fault event")

    # -- calls (worker thread, library lock held) --------------------------------------------

    def _has(self, name: str) -> bool:
        return name not in self._lib.missing

    def _call(self, name: str, *args: Any) -> int:
        return self._lib.call(name, *args)

    def _reading(self, key: str, name: str, card: int, dev: int, failed: List[Tuple[str, int]],
                 *args: Any) -> bool:
        """One per-chip reading: True when it answered. Unsupported: remembered, not asked again."""
        if not self._has(name) or (key, card, dev) in self._refused:
            return False
        rc = self._call(name, *args)
        if rc == DCMI_OK:
            return True
        if rc in UNSUPPORTED_CODES:
            self._refused.add((key, card, dev))
            self.unsupported.add(key)
            log.debug("npu %s chip %s: %s", card, dev, _failure(key, rc))
        else:
            failed.append((key, rc))
        return False

    # -- the collection (worker thread) ------------------------------------------------------

    def _collect(self) -> Snapshot:
        self._init()
        snap = Snapshot()
        ids = self._enumerate(snap)
        self._subscribe(snap)
        snap.tool_version, snap.driver_version = self._read_versions(snap)
        for card, dev in ids:
            snap.chips.append(self._read_chip(card, dev, snap))
        return snap

    def _init(self) -> None:
        lib = self._lib
        if lib.initialized:
            return
        if not self._has("dcmi_init"):
            raise DcmiUnavailable(f"{lib.path} has no dcmi_init: not a DCMI library")
        rc = self._call("dcmi_init")
        if rc != DCMI_OK:
            raise DcmiError(_failure("dcmi_init", rc), rc)
        lib.initialized = True

    def _enumerate(self, snap: Snapshot) -> List[Tuple[int, int]]:
        """(card, device) of every NPU chip: card ids as dcmi_get_card_list gives them (not 0..n-1)."""
        if not self._has("dcmi_get_card_list"):
            raise DcmiError(f"{self.library_path} has no dcmi_get_card_list: cannot list the cards")
        num = ctypes.c_int(0)
        cards = (ctypes.c_int * MAX_CARDS)()
        rc = self._call("dcmi_get_card_list", ctypes.byref(num), cards, MAX_CARDS)
        if rc != DCMI_OK:
            raise DcmiError(_failure("dcmi_get_card_list", rc), rc)
        if num.value <= 0:
            raise DcmiError("dcmi_get_card_list found no NPU card")
        listed = list(cards[: min(num.value, MAX_CARDS)])
        if set(listed) != set(self._chips_of):  # cards came or went: ids may have moved
            self._static.clear()
            self._chips_of = {c: d for c, d in self._chips_of.items() if c in listed}
        out: List[Tuple[int, int]] = []
        topology: Dict[Tuple[int, int], ChipIds] = {}
        for card in listed:
            devices = self._devices_of(card, snap)
            for dev in devices:
                static = self._static_of(card, dev, snap)
                topology[(card, dev)] = ChipIds(card, dev, static.logic, static.phy)
                out.append((card, dev))
        self.topology = topology
        self._lib.by_logic = {i.logic: (i.card, i.device) for i in topology.values() if i.logic is not None}
        return out

    def _devices_of(self, card: int, snap: Snapshot) -> List[int]:
        """The NPU chips of a card: 0..device_id_max-1 (dcmi_get_device_id_in_card), or else the
        device count with the MCU and control CPU left out by their type. A card that cannot
        say keeps the chips it had."""
        failed: List[Tuple[str, int]] = []
        max_id, mcu, cpu = ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_int(-1)
        if self._reading("dcmi_get_device_id_in_card", "dcmi_get_device_id_in_card", card, -1, failed,
                         card, ctypes.byref(max_id), ctypes.byref(mcu), ctypes.byref(cpu)):
            devices = list(range(max(max_id.value, 0)))
        else:
            count = ctypes.c_int(0)
            if self._reading("dcmi_get_device_num_in_card", "dcmi_get_device_num_in_card", card, -1, failed,
                             card, ctypes.byref(count)):
                devices = [d for d in range(max(count.value, 0)) if self._is_npu(card, d, failed)]
            else:
                devices = self._chips_of.get(card, [])
        self._chips_of[card] = devices
        self._warn(snap, f"npu {card}", failed)
        return devices

    def _is_npu(self, card: int, dev: int, failed: List[Tuple[str, int]]) -> bool:
        kind = ctypes.c_int(NPU_TYPE)
        if self._reading("dcmi_get_device_type", "dcmi_get_device_type", card, dev, failed,
                         card, dev, ctypes.byref(kind)):
            return kind.value == NPU_TYPE
        return True  # cannot tell: read it; an MCU answers -8255 to the chip readings

    def _static_of(self, card: int, dev: int, snap: Snapshot) -> _Static:
        """Logic id, phy id, name and PCIe bus id, asked until they answer, then kept."""
        static = self._static.setdefault((card, dev), _Static())
        failed: List[Tuple[str, int]] = []
        if static.logic is None:
            logic = ctypes.c_int(-1)
            if self._reading("dcmi_get_device_logic_id", "dcmi_get_device_logic_id", card, dev, failed,
                             ctypes.byref(logic), card, dev):
                static.logic = logic.value
        if static.phy is None and static.logic is not None:
            phy = ctypes.c_uint(0)
            if self._reading("dcmi_get_device_phyid_from_logicid", "dcmi_get_device_phyid_from_logicid",
                             card, dev, failed, static.logic, ctypes.byref(phy)):
                static.phy = phy.value
        if static.name is None:
            info = DcmiChipInfo()
            if self._reading("dcmi_get_device_chip_info", "dcmi_get_device_chip_info", card, dev, failed,
                             card, dev, ctypes.byref(info)):
                static.name = _text(info.chip_name)
        if static.bus_id is None:
            pcie = DcmiPcieInfoAll()
            if self._reading("dcmi_get_device_pcie_info_v2", "dcmi_get_device_pcie_info_v2", card, dev, failed,
                             card, dev, ctypes.byref(pcie)):
                static.bus_id = (f"{pcie.domain & 0xFFFF:04X}:{pcie.bdf_busid:02X}:"
                                 f"{pcie.bdf_deviceid:02X}.{pcie.bdf_funcid:X}")
        self._warn(snap, f"npu {card} chip {dev}", failed)
        return static

    def _subscribe(self, snap: Snapshot) -> None:
        """Subscribe to every chip's fault events, once per process (the driver allows no more)."""
        lib = self._lib
        if lib.subscribed is not None:
            return
        name = "dcmi_subscribe_fault_event"
        if not self._has(name):
            lib.subscribed = False
            return
        callback = FAULT_EVENT_CALLBACK(lib.on_fault)
        rc = self._call(name, -1, -1, DcmiEventFilter(), callback)
        if rc == DCMI_OK:
            lib.callback = callback  # C keeps the pointer: so must we, or it is collected
            lib.subscribed = True
        elif rc in UNSUPPORTED_CODES:
            lib.subscribed = False
            lib.missing.add(name)
            self.unsupported.add(name)
        else:  # tried again at the next read
            snap.warnings.append(_failure(name, rc) + " (fault events arrive at the next reading instead)")

    def _read_versions(self, snap: Snapshot) -> Tuple[str, str]:
        if self._versions is None:
            failed: List[Tuple[str, int]] = []
            found = []
            for name in ("dcmi_get_dcmi_version", "dcmi_get_driver_version"):
                buf = ctypes.create_string_buffer(64)
                ok = self._reading(name, name, -1, -1, failed, buf, len(buf))
                found.append(_text(buf) if ok else "")
            self._warn(snap, "versions", failed)
            if not failed:
                self._versions = (found[0], found[1])
            return found[0], found[1]
        return self._versions

    def _read_chip(self, card: int, dev: int, snap: Snapshot) -> Chip:
        """Every reading of one chip; a reading that fails is a warning, the others are still read."""
        static = self._static.get((card, dev)) or _Static()
        chip = Chip(npu_id=card, chip_id=dev, device_id=static.logic, name=static.name or "",
                    bus_id=static.bus_id or "")
        failed: List[Tuple[str, int]] = []

        def read(key: str, name: str, *args: Any) -> bool:
            return self._reading(key, name, card, dev, failed, *args)

        u = ctypes.c_uint(0)
        if read("dcmi_get_device_health", "dcmi_get_device_health", card, dev, ctypes.byref(u)):
            chip.health = HEALTH_TEXT.get(u.value, "UNKNOWN")

        count = ctypes.c_int(0)
        codes = (ctypes.c_uint * MAX_ERROR_CODES)()
        if read("dcmi_get_device_errorcode_v2", "dcmi_get_device_errorcode_v2", card, dev, ctypes.byref(count),
                codes, MAX_ERROR_CODES):
            chip.fault_codes = [c for c in codes[: max(0, min(count.value, MAX_ERROR_CODES))] if c]

        i = ctypes.c_int(0)
        if read("dcmi_get_device_temperature", "dcmi_get_device_temperature", card, dev, ctypes.byref(i)) \
                and i.value > -275:
            chip.temperature_celsius = float(i.value)
        if read("dcmi_get_device_power_info", "dcmi_get_device_power_info", card, dev, ctypes.byref(i)) \
                and i.value >= 0:
            chip.power_watts = i.value / 10.0  # 0.1 W

        for attr, kind in (("utilization_percent", UTIL_NPU), ("aicore_utilization_percent", UTIL_AICORE),
                           ("vector_utilization_percent", UTIL_VECTOR), ("aicpu_utilization_percent", UTIL_AICPU),
                           ("hbm_bandwidth_utilization_percent", UTIL_HBM_BANDWIDTH)):
            if read(f"dcmi_get_device_utilization_rate({kind})", "dcmi_get_device_utilization_rate",
                    card, dev, kind, ctypes.byref(u)) and u.value <= 100:
                setattr(chip, attr, float(u.value))

        if read(f"dcmi_get_device_frequency({FREQ_AICORE_CURRENT})", "dcmi_get_device_frequency",
                card, dev, FREQ_AICORE_CURRENT, ctypes.byref(u)):
            chip.aicore_frequency_mhz = float(u.value)

        hbm = DcmiHbmInfo()
        if read("dcmi_get_device_hbm_info", "dcmi_get_device_hbm_info", card, dev, ctypes.byref(hbm)) \
                and hbm.memory_size:
            chip.hbm_total_bytes = float(hbm.memory_size * MIB)
            chip.hbm_used_bytes = float(min(hbm.memory_usage, hbm.memory_size) * MIB)
            if chip.hbm_bandwidth_utilization_percent is None and hbm.bandwith_util_rate <= 100:
                chip.hbm_bandwidth_utilization_percent = float(hbm.bandwith_util_rate)

        self._read_ddr(chip, read)

        # DDR ECC on every chip, HBM ECC where there is HBM, as `npu-smi info -t ecc` lists them; kinds named
        # as the npu-smi parser names them
        kinds = [(DEVICE_TYPE_DDR, "ddr")] + ([(DEVICE_TYPE_HBM, "hbm")] if chip.hbm_total_bytes else [])
        for kind, memory in kinds:
            ecc = DcmiEccInfo()
            if read(f"dcmi_get_device_ecc_info({kind})", "dcmi_get_device_ecc_info", card, dev, kind,
                    ctypes.byref(ecc)) and ecc.enable_flag:
                chip.ecc_errors.update({
                    f"{memory}_single_bit": float(ecc.single_bit_error_cnt),
                    f"{memory}_double_bit": float(ecc.double_bit_error_cnt),
                    f"{memory}_single_bit_aggregate": float(ecc.total_single_bit_error_cnt),
                    f"{memory}_double_bit_aggregate": float(ecc.total_double_bit_error_cnt),
                })

        if read("dcmi_get_device_network_health", "dcmi_get_device_network_health", card, dev, ctypes.byref(i)):
            chip.network_health = NETWORK_TEXT.get(i.value, str(i.value))

        self._warn(snap, f"npu {card} chip {dev}", failed)
        return chip

    def _read_ddr(self, chip: Chip, read: Callable[..., bool]) -> None:
        """DDR through dcmi_get_device_memory_info_v3, else the V1 query. A chip without DDR
        (910B, A3: DCMI answers 0 MB) is not asked again."""
        card, dev = chip.npu_id, chip.chip_id
        if ("ddr", card, dev) in self._refused:
            return
        mem = DcmiGetMemoryInfo()
        v1 = DcmiMemoryInfo()
        if read("dcmi_get_device_memory_info_v3", "dcmi_get_device_memory_info_v3", card, dev, ctypes.byref(mem)):
            size = mem.memory_size
            if size:
                chip.ddr_total_bytes = float(size * MIB)
                chip.ddr_used_bytes = float(max(size - min(mem.memory_available, size), 0) * MIB)
                chip.hugepages_total = float(mem.hugepages_total)
                chip.hugepages_used = float(max(mem.hugepages_total - mem.hugepages_free, 0))
        elif ((not self._has("dcmi_get_device_memory_info_v3")
               or ("dcmi_get_device_memory_info_v3", card, dev) in self._refused)
              and read("dcmi_get_memory_info", "dcmi_get_memory_info", card, dev, ctypes.byref(v1))):
            size = v1.memory_size
            if size:
                chip.ddr_total_bytes = float(size * MIB)
                chip.ddr_used_bytes = float(size * MIB * min(v1.utiliza, 100) / 100.0)
        else:
            return
        if chip.ddr_total_bytes is None:
            self._refused.add(("ddr", card, dev))

    def _warn(self, snap: Snapshot, where: str, failed: List[Tuple[str, int]]) -> None:
        """One warning per code, naming every call that failed with it."""
        by_code: Dict[int, List[str]] = {}
        for key, rc in failed:
            by_code.setdefault(rc, []).append(key)
        for rc, keys in by_code.items():
            snap.warnings.append(f"{where}: {_failure(', '.join(keys), rc)}")
