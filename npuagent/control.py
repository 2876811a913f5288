"""The agent's side of the client channel: the Unix socket inference processes connect to.

An inference process imports :mod:`npuagent.client`, connects here, says hello, and
keeps the connection. Through it the app pushes its measurements (latency, TTFT,
TPOT, queue, output validity, allocator figures) and the agent sends commands
(``empty_cache``, ``set_concurrency``, an app's own) and waits for the answers.

The protocol: newline-delimited JSON objects, both ways, each line at most
:data:`npuagent.client.MAX_LINE` bytes.

=========================  ===================================================================
app -> agent               ``{"type": "hello", "app": "llm", "devices": [0, 1], "protocol": 1}``
                           (first, once); ``{"type": "metrics", "samples": [{"name", "labels",
                           "value"}, ...]}``; ``{"type": "reply", "id": 7, "ok": true, "result":
                           {...}}`` or ``{..., "ok": false, "error": "..."}``
agent -> app               ``{"type": "command", "id": 7, "command": "empty_cache", "args": {}}``;
                           ``{"type": "error", "error": "..."}`` before the agent hangs up
=========================  ===================================================================

Why it is built this way:

* **Identity from the kernel.** The pid and uid of a session are the socket's peer
  credentials (``SO_PEERCRED``), never what the app says: a pid in a message could be
  any process's, and an action aimed at "the processes on NPU 3" must reach those.
  In a container the kernel reports the host's pid, the one npu-smi's table shows.
* **Only the configured users and groups.** A process of another user could push
  made-up latencies or receive commands meant for the real server; root and the
  agent's own user are always accepted, others only when ``users`` or ``groups`` name
  them (the group of the socket file, mode 0660, is the first fence; this is the
  second, for sockets bind-mounted into containers).
* **One thread, non-blocking reads.** A slow or silent app never holds the loop;
  writes (commands) come from remediation workers and wait at most a few seconds.
* **Bounded.** Sessions, samples per push and line length are capped, and an app that
  sends garbage is disconnected with a reason; a session's series leave with it.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import json
import logging
import math
import os
import pwd
import re
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .client import MAX_LINE
from .model import Sample

log = logging.getLogger("npuagent.control")

MAX_SESSIONS = 256
MAX_SAMPLES = 5000
_SEND_TIMEOUT = 5.0
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: labels the agent sets itself; an app's own values for them are replaced
RESERVED = ("app", "pid")


class CommandFailed(Exception):
    """A command got no good answer: the app said no, it was gone, or it did not answer in time."""


@dataclass
class Session:
    """One connected app process, as the kernel and its hello describe it."""

    id: int
    pid: int
    uid: int
    gid: int
    app: str = ""
    devices: Tuple[int, ...] = ()
    connected_at: float = 0.0
    last_push: float = 0.0
    samples: List[Sample] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.app or '?'} (pid {self.pid}, uid {self.uid})"


class _Conn:
    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.session = session
        self.buf = bytearray()
        self.hello = False
        self.send_lock = threading.Lock()


def peer_credentials(sock: socket.socket) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


# SO_PEERGROUPS (Linux 4.13): few builds of the socket module name it; 59 is its number on x86-64 and arm64
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59 if os.uname().machine in ("x86_64", "aarch64") else None)


def peer_groups(sock: socket.socket) -> Tuple[int, ...]:
    """The supplementary groups the process at the other end held when it connected, from the kernel
    (``docker run --group-add`` gives them to users the host may not know); () where the kernel does not say
    (before Linux 4.13, or over the 256 groups that fit the socket module's largest buffer)."""
    if _SO_PEERGROUPS is None:
        return ()
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 1024)
    except OSError:
        return ()
    return struct.unpack(f"{len(data) // 4}I", data[: len(data) // 4 * 4])


class ControlServer:
    """Listens on ``path``; keeps the sessions, their latest measurements, and the commands in flight.

    :param users: user names (or uids) allowed besides root and the agent's own user.
    :param groups: group names (or gids): a peer whose primary or supplementary groups include
        one is allowed: the groups its process holds (from the kernel), or its user's in the
        group database.
    :param mode: the socket file's permissions; ``group`` its group (for mode 0660).
    """

    def __init__(self, path: str, users: Sequence[str] = (), groups: Sequence[str] = (), mode: int = 0o660,
                 group: str = "", clock: Any = time.time) -> None:
        self.path = path
        self.mode = mode
        self.group = group
        self.clock = clock
        self.allowed_uids = {0, os.getuid(), *(_uid(u) for u in users)} - {None}
        self.allowed_gids = {_gid(g) for g in groups} - {None}
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._conns: Dict[int, _Conn] = {}
        self._pending: Dict[int, Tuple[threading.Event, List[Dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._listener: Optional[socket.socket] = None
        self.refused = 0
        self.garbled = 0

    # -- life --

    def start(self) -> ControlServer:
        """Bind (replacing a stale socket file of a previous run), set mode and group, start the thread."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # nobody listens there: left by an agent that was killed
            else:
                raise OSError(f"{self.path}: another agent is listening there")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        if self.group:
            gid = _gid(self.group)
            if gid is None:
                log.warning("control socket: group %r does not exist; the socket keeps the agent's group", self.group)
            else:
                os.chown(self.path, -1, gid)
        os.chmod(self.path, self.mode)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            conns = list(self._conns.values())
            self._conns.clear()
            for event, box in self._pending.values():
                box.append({"ok": False, "error": "the agent is stopping"})
                event.set()
        for conn in conns:
            conn.sock.close()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._sel.close()

    # -- what the rest of the agent asks --

    def sessions(self) -> List[Session]:
        """The apps that said hello, oldest first."""
        with self._lock:
            return [c.session for c in self._conns.values() if c.hello]

    def samples(self) -> List[Sample]:
        """Every session's latest measurements, labelled ``app`` and ``pid``, and ``app_connected``."""
        out: List[Sample] = []
        for s in self.sessions():
            out.append(Sample("app_connected", {"app": s.app, "pid": str(s.pid)}, 1.0))
            out.extend(s.samples)
        return out

    def command(self, session_id: int, command: str, args: Optional[Dict[str, Any]] = None,
                timeout: float = 10.0) -> Dict[str, Any]:
        """Send a command to one session and wait for its reply's ``result``; raise :class:`CommandFailed`."""
        with self._lock:
            conn = self._conns.get(session_id)
        if conn is None or not conn.hello:
            raise CommandFailed(f"session {session_id} is gone")
        cid = next(self._ids)
        event: threading.Event = threading.Event()
        box: List[Dict[str, Any]] = []
        with self._lock:
            self._pending[cid] = (event, box)
        try:
            self._send(conn, {"type": "command", "id": cid, "command": command, "args": args or {}})
            if not event.wait(max(timeout, 0.0)):
                raise CommandFailed(f"{conn.session.describe()} did not answer {command} within {timeout:g}s")
        except OSError as e:
            raise CommandFailed(f"{conn.session.describe()}: cannot send {command}: {e}") from None
        finally:
            with self._lock:
                self._pending.pop(cid, None)
        reply = box[0]
        if not reply.get("ok"):
            raise CommandFailed(f"{conn.session.describe()}: {command}: {reply.get('error') or 'refused'}")
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    # -- the thread --

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._sel.select(timeout=0.2)
            except OSError:
                return
            for key, _ in events:
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError as e:
            log.warning("control socket: no peer credentials (%s); connection refused", e)
            sock.close()
            return
        why = self._refusal(pid, uid, gid, peer_groups(sock) if self.allowed_gids else ())
        if why:
            self.refused += 1
            log.warning("control socket: refused pid %d uid %d: %s", pid, uid, why)
            _say(sock, {"type": "error", "error": f"refused: {why}"})
            sock.close()
            return
        session = Session(next(self._ids), pid, uid, gid, connected_at=self.clock())
        sock.setblocking(False)
        conn = _Conn(sock, session)
        with self._lock:
            self._conns[session.id] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _refusal(self, pid: int, uid: int, gid: int, groups: Sequence[int] = ()) -> str:
        with self._lock:
            if len(self._conns) >= MAX_SESSIONS:
                return f"{MAX_SESSIONS} sessions already"
        if uid in self.allowed_uids or gid in self.allowed_gids or self.allowed_gids & set(groups):
            return ""
        if self.allowed_gids:
            try:
                name = pwd.getpwuid(uid).pw_name
                if self.allowed_gids & set(os.getgrouplist(name, gid)):
                    return ""
            except KeyError:
                pass
        return "its user is not in the control socket's users or groups"

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn, "")
            return
        conn.buf += data
        while True:
            i = conn.buf.find(b"\n")
            if i < 0:
                break
            line = bytes(conn.buf[:i])
            del conn.buf[: i + 1]
            why = self._handle(conn, line) if len(line) <= MAX_LINE else f"a line over {MAX_LINE} bytes"
            if why:
                self.garbled += 1
                self._drop(conn, why)
                return
        if len(conn.buf) > MAX_LINE:
            self.garbled += 1
            self._drop(conn, f"a line over {MAX_LINE} bytes")

    def _handle(self, conn: _Conn, line: bytes) -> str:
        """One message; a non-empty return is why the session is dropped."""
        if not line.strip():
            return ""
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            return "a line that is not JSON"
        if not isinstance(msg, dict):
            return "a message that is not a JSON object"
        kind = msg.get("type")
        s = conn.session
        if not conn.hello:
            if kind != "hello":
                return f"the first message must be a hello, not {kind!r}"
            app = msg.get("app")
            if not isinstance(app, str) or not app.strip() or len(app) > 200:
                return "hello without an app name"
            devices = msg.get("devices") or []
            if not isinstance(devices, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                        for d in devices):
                return "hello: devices must be a list of integers"
            s.app, s.devices = app.strip(), tuple(devices)
            conn.hello = True
            log.info("control: %s connected (devices %s)", s.describe(), list(s.devices) or "not given")
            return ""
        if kind == "metrics":
            samples, why = _samples(msg.get("samples"), s)
            if why:
                return why
            s.samples, s.last_push = samples, self.clock()
        elif kind == "reply":
            with self._lock:
                waiting = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
            if waiting is not None:
                waiting[1].append(msg)
                waiting[0].set()
        return ""

    def _drop(self, conn: _Conn, why: str) -> None:
        if why:
            log.warning("control: dropped %s: %s", conn.session.describe(), why)
            _say(conn.sock, {"type": "error", "error": why})
        elif conn.hello:
            log.info("control: %s disconnected", conn.session.describe())
        with self._lock:
            self._conns.pop(conn.session.id, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.sock.close()

    def _send(self, conn: _Conn, message: Dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        deadline = time.monotonic() + _SEND_TIMEOUT
        with conn.send_lock:
            view = memoryview(data)
            while view:
                try:
                    sent = conn.sock.send(view)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError("the app does not read its socket") from None
                    time.sleep(0.01)
                    continue
                view = view[sent:]


def _samples(raw: Any, s: Session) -> Tuple[List[Sample], str]:
    """Validate a push: names and labels as Prometheus allows, finite numbers, at most MAX_SAMPLES."""
    if not isinstance(raw, list):
        return [], "metrics without a list of samples"
    if len(raw) > MAX_SAMPLES:
        return [], f"{len(raw)} samples in one push (at most {MAX_SAMPLES})"
    out = []
    for item in raw:
        if not isinstance(item, dict):
            return [], "a sample that is not an object"
        name, labels, value = item.get("name"), item.get("labels") or {}, item.get("value")
        if not isinstance(name, str) or not _NAME.match(name):
            return [], f"bad metric name {name!r}"
        if not isinstance(labels, dict) or not all(isinstance(k, str) and _LABEL.match(k) and isinstance(v, str)
                                                   for k, v in labels.items()):
            return [], f"{name}: labels must map label names to strings"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return [], f"{name}: value {value!r} is not a number"
        out.append(Sample(name, {**labels, "app": s.app, "pid": str(s.pid)}, float(value)))
    return out, ""


def _say(sock: socket.socket, message: Dict[str, Any]) -> None:
    """A last word before hanging up; the peer may already be gone."""
    try:
        sock.setblocking(True)
        sock.settimeout(0.5)
        sock.sendall((json.dumps(message) + "\n").encode())
    except OSError:
        pass


def _uid(user: Any) -> Optional[int]:
    if isinstance(user, int) or str(user).isdigit():
        return int(user)
    try:
        return pwd.getpwnam(str(user)).pw_uid
    except KeyError:
        log.warning("control socket: user %r does not exist", user)
        return None


def _gid(group: Any) -> Optional[int]:
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        log.warning("control socket: group %r does not exist", group)
        return None
