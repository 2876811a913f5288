"""The client channel for real: the agent's Unix socket, and npuagent.client in app processes of its own.

Each app is a subprocess (tests/helpers/client_app.py) with a stand-in torch/torch_npu on its path,
so the pid the agent learns from SO_PEERCRED is a different process's, as in production.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from npuagent.builtin.apps import Apps, EmptyCache, Throttle
from npuagent.context import PluginContext
from npuagent.control import CommandFailed, ControlServer
from npuagent.model import ActionRequest, Sample

from .conftest import ROOT

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
FAKE_TORCH = os.path.join(HELPERS, "fake_torch")


def wait_for(predicate: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def server(tmp_path: Any) -> Iterator[ControlServer]:
    s = ControlServer(str(tmp_path / "run" / "control.sock")).start()
    yield s
    s.close()


class App:
    """An app subprocess and the limits it printed, read by a thread so that no test blocks on its pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.lines.get(timeout=30) == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def limit_changes(self, count: int, seconds: float = 10.0) -> List[Optional[int]]:
        out = []
        deadline = time.monotonic() + seconds
        while len(out) < count:
            try:
                out.append(json.loads(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))["limit"])
            except queue.Empty:
                break
        return out


@pytest.fixture
def start_app(server: ControlServer) -> Iterator[Callable[..., App]]:
    procs: List[subprocess.Popen] = []

    def start(app: str = "llm", devices: str = "0", limit: str = "8", torch: bool = True,
              env: Optional[Dict[str, str]] = None, socket_path: Optional[str] = None) -> App:
        path = [ROOT] + ([FAKE_TORCH] if torch else [])
        e = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "NPUAGENT_SOCKET": socket_path or server.path,
             "ASCEND_RT_VISIBLE_DEVICES": "", **(env or {})}
        p = subprocess.Popen([sys.executable, os.path.join(HELPERS, "client_app.py"), app, devices, limit],
                             stdout=subprocess.PIPE, text=True, env=e)
        procs.append(p)
        return App(p)

    yield start
    for p in procs:
        p.kill()
        p.wait()


def session_of(server: ControlServer, pid: int) -> Any:
    return wait_for(lambda: next((s for s in server.sessions() if s.pid == pid), None))


def test_the_session_is_who_the_kernel_says(server: ControlServer, start_app: Callable[..., App]) -> None:
    app = start_app("llm-serving", "4,5")
    s = session_of(server, app.proc.pid)
    assert s is not None
    assert (s.app, s.devices, s.uid) == ("llm-serving", (4, 5), os.getuid())


def test_pushed_measurements_become_samples_labelled_app_and_pid(server: ControlServer,
                                                                 start_app: Callable[..., App]) -> None:
    app = start_app("llm", "3", env={"FAKE_TORCH_RESERVED": str(6 << 30), "FAKE_TORCH_ALLOCATED": str(2 << 30)})
    pid = str(app.proc.pid)

    def names() -> Dict[str, List[Sample]]:
        out: Dict[str, List[Sample]] = {}
        for s in server.samples():
            out.setdefault(s.name, []).append(s)
        return out if "inference_requests_total" in out and "app_memory_reserved_bytes" in out else {}

    got = wait_for(names)
    assert all(s.labels["app"] == "llm" and s.labels["pid"] == pid for v in got.values() for s in v)
    assert {"app_connected", "inference_latency_seconds_bucket", "inference_latency_seconds_sum",
            "inference_latency_seconds_count", "inference_requests_total", "inference_ttft_seconds_bucket",
            "inference_tpot_seconds_bucket", "inference_queue_length", "inference_outputs_total",
            "app_memory_reserved_bytes", "app_memory_allocated_bytes"} <= set(got)
    (reserved,) = got["app_memory_reserved_bytes"]
    assert (reserved.labels["device_id"], reserved.value) == ("3", float(6 << 30))
    # the collector serves the same, and its series leave with the process
    ctx = PluginContext("apps", "apps", {})
    ctx.control = server
    assert {s.name for s in Apps(ctx).collect()} >= set(got)
    app.proc.kill()
    app.proc.wait()
    assert wait_for(lambda: not server.samples())


def test_empty_cache_and_set_concurrency_round_trip(server: ControlServer, start_app: Callable[..., App]) -> None:
    app = start_app("llm", "0", limit="8")
    s = session_of(server, app.proc.pid)
    freed = server.command(s.id, "empty_cache", {}, timeout=10)
    assert (freed["reserved_before"], freed["reserved_after"], freed["freed"]) == (8 << 30, 5 << 30, 3 << 30)
    assert freed["backend"] == "npu"
    changed = server.command(s.id, "set_concurrency", {"factor": 0.5}, timeout=10)
    assert (changed["old_limit"], changed["new_limit"]) == (8, 4)
    assert app.limit_changes(1) == [4]
    assert server.command(s.id, "set_concurrency", {"restore": True}, timeout=10)["new_limit"] == 8
    assert app.limit_changes(1) == [8]
    assert server.command(s.id, "echo", {"x": 1}, timeout=10) == {"echo": {"x": 1}}
    with pytest.raises(CommandFailed, match="unknown command 'nope'"):
        server.command(s.id, "nope", {}, timeout=10)
    with pytest.raises(CommandFailed, match="exactly one of"):
        server.command(s.id, "set_concurrency", {}, timeout=10)


def test_empty_cache_without_torch_is_a_failure_with_the_reason(server: ControlServer,
                                                                 start_app: Callable[..., App]) -> None:
    app = start_app(torch=False)
    s = session_of(server, app.proc.pid)
    with pytest.raises(CommandFailed, match="torch is not importable"):
        server.command(s.id, "empty_cache", {}, timeout=10)


def test_empty_cache_falls_back_to_torch_cuda_when_torch_npu_is_not_importable(server: ControlServer,
                                                                               start_app: Callable[..., App]) -> None:
    """A CUDA build of torch, no torch_npu: the cache is freed through torch.cuda, on the host's device ids."""
    app = start_app("llm", "1", env={"FAKE_TORCH_CUDA": "1", "CUDA_VISIBLE_DEVICES": "6,7",
                                     "FAKE_TORCH_RESERVED": str(6 << 30), "FAKE_TORCH_ALLOCATED": str(4 << 30)})
    s = session_of(server, app.proc.pid)
    assert s.devices == (7,)
    pushed = wait_for(lambda: [(x.labels["device_id"], x.value) for x in server.samples()
                               if x.name == "app_memory_reserved_bytes"])
    assert pushed == [("7", float(6 << 30))]  # the allocator figures come from torch.cuda too
    freed = server.command(s.id, "empty_cache", {}, timeout=10)
    assert freed["backend"] == "cuda"
    assert (freed["reserved_before"], freed["reserved_after"], freed["freed"]) == (6 << 30, 4 << 30, 2 << 30)
    assert freed["devices"] == [{"device": 7, "reserved_before": 6 << 30, "reserved_after": 4 << 30}]
    assert server.command(s.id, "empty_cache", {}, timeout=10)["freed"] == 0  # nothing cached is left


def test_a_command_to_a_process_that_does_not_answer_times_out(server: ControlServer, start_app: Callable[..., App]
                                                               ) -> None:
    app = start_app()
    s = session_of(server, app.proc.pid)
    os.kill(app.proc.pid, 19)  # SIGSTOP: connected, but answering nothing
    try:
        with pytest.raises(CommandFailed, match=r"did not answer empty_cache within 0\.3s"):
            server.command(s.id, "empty_cache", {}, timeout=0.3)
    finally:
        os.kill(app.proc.pid, 18)


def test_the_client_fails_open_and_connects_when_the_agent_comes(tmp_path: Any) -> None:
    """No agent: measuring costs nothing and raises nothing; an agent that appears later gets the app."""
    path = str(tmp_path / "late.sock")
    code = f"""
import sys, time
sys.path.insert(0, {ROOT!r})
from npuagent import client
c = client.Client("late", [0], path={path!r}, push_interval=0.1)
c.backoff_min = c.backoff_max = 0.05
c.start()
for _ in range(1000):
    with c.limiter, c.measure("inference"):
        pass
print("served", flush=True)
time.sleep(60)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "served"
        server = ControlServer(path).start()
        try:
            s = session_of(server, p.pid)
            assert s is not None and s.app == "late"
            count = wait_for(lambda: next((x.value for x in server.samples()
                                           if x.name == "inference_requests_total"), None))
            assert count == 1000
        finally:
            server.close()
    finally:
        p.kill()
        p.wait()


def test_the_client_reconnects_by_itself_when_the_agent_comes_back_and_serves_while_it_is_away(tmp_path: Any
                                                                                                ) -> None:
    """The agent stops (its socket file removed), then is killed (its socket file left behind): each time the app
    serves on without waiting, and says hello again to the agent that comes back, which can command it."""
    path = str(tmp_path / "run" / "control.sock")
    code = f"""
import sys
sys.path.insert(0, {ROOT!r})
from npuagent import client
c = client.Client("back", [0], path={path!r}, push_interval=0.1)
c.backoff_min = c.backoff_max = 0.05
c.register("echo", lambda args: {{"echo": args}})
c.start()
print("ready", flush=True)
for line in sys.stdin:  # a number from the test: serve that many requests, then say so and whether connected
    for _ in range(int(line)):
        with c.limiter, c.measure("inference"):
            pass
    print(int(line), c.connected, flush=True)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    app = App(p)
    assert p.stdin is not None

    def serve(n: int) -> str:
        assert p.stdin is not None
        p.stdin.write(f"{n}\n")
        p.stdin.flush()
        return app.lines.get(timeout=30)  # requests that waited for the agent would never get here

    def requests(server: ControlServer, count: float) -> bool:
        return any(x.name == "inference_requests_total" and x.labels["status"] == "ok" and x.value == count
                   for x in server.samples())

    def away() -> bool:
        return serve(0) == "0 False"

    server: Optional[ControlServer] = None
    try:
        server = ControlServer(path).start()
        s = session_of(server, p.pid)
        assert s is not None and s.app == "back"
        assert wait_for(lambda: serve(0) == "0 True")
        assert serve(10) == "10 True"
        assert wait_for(lambda: requests(server, 10))
        server.close()  # the agent stops
        server = None
        assert wait_for(away)
        assert serve(1000) == "1000 False"  # the agent is away: the requests ran all the same

        server = ControlServer(path).start()
        s = session_of(server, p.pid)
        assert s is not None and (s.app, s.devices) == ("back", (0,))  # hello again, by itself
        assert wait_for(lambda: requests(server, 1010))  # nothing counted while away was lost
        assert server.command(s.id, "echo", {"x": 2}, timeout=10) == {"echo": {"x": 2}}
        assert server.command(s.id, "status", {}, timeout=10)["pid"] == p.pid

        server.close()
        server = None
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(path)  # as a killed agent leaves it: the file is there, nobody listens
        dead.close()
        assert wait_for(away)
        assert serve(5) == "5 False"
        server = ControlServer(path).start()
        s = session_of(server, p.pid)
        assert s is not None and s.app == "back"
        assert wait_for(lambda: requests(server, 1015))
        assert server.command(s.id, "echo", {"y": 3}, timeout=10) == {"echo": {"y": 3}}
    finally:
        p.kill()
        p.wait()
        if server is not None:
            server.close()


def test_importing_the_client_pulls_in_no_dependency_of_the_agent(tmp_path: Any) -> None:
    """A serving image may have none of them: a copy of the package's two files in a bare interpreter works."""
    pkg = tmp_path / "npuagent"
    pkg.mkdir()
    for name in ("__init__.py", "client.py"):
        shutil.copy(os.path.join(ROOT, "npuagent", name), pkg / name)
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import npuagent.client as c; c.Client('x').samples(); "
            "bad = [m for m in ('pluggy', 'psutil', 'apprise', 'prometheus_client', 'sdnotify', 'tomli') "
            "if m in sys.modules]; print(bad)")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


@pytest.mark.slow
def test_the_package_installed_without_its_dependencies_serves_an_app(tmp_path: Any) -> None:
    """What a serving image does: `pip install --no-deps npuagent` into a place that has none of the agent's
    dependencies, then a bare interpreter (no site-packages) imports the client, talks to a real agent's
    socket, and has loaded no dependency of the agent."""
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "npuagent"), src / "npuagent", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    target = tmp_path / "image"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    installed = {p.name.split("-")[0] for p in target.iterdir()}
    assert installed == {"npuagent", "bin"}, installed  # the package, its dist-info and script, nothing else
    path = str(tmp_path / "agent.sock")
    server = ControlServer(path).start()
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); from npuagent import client; "
            f"c = client.connect('image-app', devices=[2], path={path!r}); "
            "import time; t = time.monotonic()\n"
            "while not c.connected and time.monotonic() - t < 30: time.sleep(0.02)\n"
            "bad = [m for m in ('pluggy', 'psutil', 'apprise', 'prometheus_client', 'sdnotify', 'tomli') "
            "if m in sys.modules]\n"
            "print(c.connected, bad, client.__file__.startswith(sys.path[0]), flush=True); time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line == "True [] True", (line, p.stderr.read() if p.poll() is not None else "")
        s = session_of(server, p.pid)
        assert s is not None and (s.app, s.devices) == ("image-app", (2,))
    finally:
        p.kill()
        p.wait()
        server.close()


def raw(server: ControlServer) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(server.path)
    return s


def answer(sock: socket.socket) -> Dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return json.loads(data) if data else {}


@pytest.mark.parametrize(("lines", "why"), [
    ([b"not json"], "a line that is not JSON"),
    ([b'{"type": "metrics", "samples": []}'], "the first message must be a hello, not 'metrics'"),
    ([b'{"type": "hello"}'], "hello without an app name"),
    ([b'{"type": "hello", "app": "x", "devices": ["a"]}'], "devices must be a list of integers"),
    ([b'{"type": "hello", "app": "x"}', b'{"type": "metrics", "samples": [{"name": "1bad", "value": 1}]}'],
     "bad metric name '1bad'"),
    ([b'{"type": "hello", "app": "x"}', b'{"type": "metrics", "samples": [{"name": "a", "value": "1"}]}'],
     "a: value '1' is not a number"),
    ([b'{"type": "hello", "app": "x"}', b'{"type": "metrics", "samples": [{"name": "a", "labels": {"k": 1}, '
                                        b'"value": 1}]}'], "labels must map label names to strings"),
    ([b"x" * (1 << 20 + 1)], "a line over"),
])
def test_garbage_ends_the_session_with_the_reason_and_the_server_lives(server: ControlServer, lines: List[bytes],
                                                                       why: str) -> None:
    s = raw(server)
    try:
        for line in lines:
            s.sendall(line + b"\n")
    except BrokenPipeError:
        pass  # the agent hung up in the middle of the long line: its last word is still there to read
    got = answer(s)
    assert got["type"] == "error" and why in got["error"]
    s.close()
    assert wait_for(lambda: server.sessions() == [])
    ok = raw(server)
    ok.sendall(b'{"type": "hello", "app": "fine"}\n')
    assert wait_for(lambda: [x.app for x in server.sessions()] == ["fine"])
    ok.close()


def test_an_app_cannot_claim_its_app_and_pid_labels(server: ControlServer) -> None:
    s = raw(server)
    s.sendall(b'{"type": "hello", "app": "mine", "pid": 1}\n'
              b'{"type": "metrics", "samples": [{"name": "m", "labels": {"app": "other", "pid": "1"}, "value": 2}]}\n')
    got = wait_for(lambda: [x for x in server.samples() if x.name == "m"])
    assert got[0].labels == {"app": "mine", "pid": str(os.getpid())}
    s.close()


# an app of another user: connects, says hello, prints what the agent answers, stays connected argv[2] seconds
# (the agent may hang up before the hello is written: the refusal is still there to read)
HELLO = ("import socket, sys, time\n"
         "s = socket.socket(socket.AF_UNIX)\n"
         "s.connect(sys.argv[1])\n"
         "try:\n"
         "    s.sendall(b'{\"type\": \"hello\", \"app\": \"x\"}\\n')\n"
         "except OSError:\n"
         "    pass\n"
         "print(s.recv(4096).decode())\n"
         "time.sleep(float(sys.argv[2]))\n")
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter may sit where other users cannot reach it


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_a_user_outside_users_and_groups_is_refused() -> None:
    python = SYSTEM_PYTHON
    if not os.path.exists(python):
        pytest.skip("no system python3 for another user to run")
    where = tempfile.mkdtemp()  # pytest's own temporary directories are closed to other users
    os.chmod(where, 0o755)
    code = HELLO
    refusing = ControlServer(os.path.join(where, "a.sock")).start()
    allowing = ControlServer(os.path.join(where, "b.sock"), users=["65534"]).start()
    try:
        for s in (refusing, allowing):
            os.chmod(s.path, 0o666)  # let the kernel pass: the check under test is the agent's
        done = subprocess.run([python, "-I", "-c", code, refusing.path, "0"], capture_output=True, text=True,
                              timeout=30, user=65534, group=65534, cwd="/")
        assert "refused: its user is not in the control socket's users or groups" in done.stdout, done.stderr
        assert refusing.refused == 1 and refusing.sessions() == []
        p = subprocess.Popen([python, "-I", "-c", code.replace("print(s.recv(4096).decode())\n", ""), allowing.path,
                              "10"], user=65534, group=65534, cwd="/")
        try:
            assert wait_for(lambda: [x.uid for x in allowing.sessions()] == [65534])
        finally:
            p.kill()
            p.wait()
    finally:
        refusing.close()
        allowing.close()
        shutil.rmtree(where)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as other users and to add a group")
def test_processes_in_an_allowed_group_are_accepted_and_others_refused() -> None:
    """``groups``: a process whose user is a member of one (in the group database), whose primary group is one, or
    that holds one as a supplementary group (``docker run --group-add``, with no such user on the host) is
    accepted; any other process of a user outside ``users`` is refused."""
    if not os.path.exists(SYSTEM_PYTHON) or shutil.which("groupadd") is None or shutil.which("gpasswd") is None:
        pytest.skip("needs a system python3, groupadd and gpasswd")
    try:
        daemon = grp.getgrnam("daemon").gr_gid
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no daemon group or nobody user")
    stranger = next(u for u in range(54321, 60000) if not _exists(pwd.getpwuid, u))  # a container's user
    group = f"npuagent-t{os.getpid()}"
    made = subprocess.run(["groupadd", group], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot add a group: {made.stderr.strip()}")
    where = tempfile.mkdtemp()  # pytest's own temporary directories are closed to other users
    os.chmod(where, 0o755)
    servers: List[ControlServer] = []
    try:
        subprocess.run(["gpasswd", "-a", "nobody", group], check=True, capture_output=True)
        members = ControlServer(os.path.join(where, "members.sock"), groups=[group]).start()
        servers.append(members)
        daemons = ControlServer(os.path.join(where, "daemons.sock"), groups=[str(daemon)]).start()  # a gid
        servers.append(daemons)
        for s in servers:
            os.chmod(s.path, 0o666)  # let the kernel pass: the check under test is the agent's

        def accepted(server: ControlServer, uid: int, gid: int, extra: List[int]) -> bool:
            p = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", HELLO, server.path, "30"], stdout=subprocess.DEVNULL,
                                 user=uid, group=gid, extra_groups=extra, cwd="/")
            try:
                return bool(wait_for(lambda: [(x.pid, x.uid) for x in server.sessions()] == [(p.pid, uid)]))
            finally:
                p.kill()
                p.wait()
                wait_for(lambda: server.sessions() == [])

        def answer(server: ControlServer, uid: int, gid: int, extra: List[int]) -> str:
            done = subprocess.run([SYSTEM_PYTHON, "-I", "-c", HELLO, server.path, "0"], capture_output=True,
                                  text=True, timeout=30, user=uid, group=gid, extra_groups=extra, cwd="/")
            return done.stdout

        # a member of the group: its process need not hold the group (it logged in before it was added)
        assert accepted(members, nobody.pw_uid, nobody.pw_gid, [])
        assert accepted(daemons, nobody.pw_uid, daemon, [])  # its primary group
        assert accepted(daemons, nobody.pw_uid, nobody.pw_gid, [daemon])  # held as a supplementary group
        assert accepted(daemons, stranger, stranger, [daemon])  # so, too, by a user the host does not know
        assert (members.refused, daemons.refused) == (0, 0)
        refused = "refused: its user is not in the control socket's users or groups"
        assert refused in answer(daemons, nobody.pw_uid, nobody.pw_gid, [])  # nobody is no member of daemon
        assert refused in answer(members, stranger, stranger, [daemon])  # nor is the stranger of the new group
        assert (members.refused, daemons.refused) == (1, 1)
        assert members.sessions() == [] and daemons.sessions() == []
    finally:
        for s in servers:
            s.close()
        subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(where)


def _exists(lookup: Callable[[Any], Any], key: Any) -> bool:
    try:
        lookup(key)
    except KeyError:
        return False
    return True


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(tmp_path: Any) -> None:
    path = str(tmp_path / "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: an agent killed with -9
    first = ControlServer(path).start()
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o660"
        with pytest.raises(OSError, match="another agent is listening there"):
            ControlServer(path).start()
    finally:
        first.close()
    assert not os.path.exists(path)


# -- the actions --------------------------------------------------------------------------------------------


def action(cls: Any, server: ControlServer, options: Dict[str, Any], table: List[Sample]) -> Any:
    base = {"app": "", "process_metric": "npu_process_memory_bytes", "device_label": "device_id", "factor": None,
            "limit": None}
    ctx = PluginContext("act", cls.__name__.lower(), {**base, **options}, timeout=10.0)
    ctx.control = server
    ctx.latest = lambda name: [s for s in table if s.name == name]
    return cls(ctx)


def request(labels: Dict[str, str], dry_run: bool = False) -> ActionRequest:
    return ActionRequest(action="act", rule="r", labels=labels, state="firing", dry_run=dry_run)


def test_actions_reach_the_processes_on_the_alerts_device(server: ControlServer, start_app: Callable[..., App]) -> None:
    on_3, on_5 = start_app("a", ""), start_app("b", "")  # they name no device: npu-smi's table does
    for app in (on_3, on_5):
        session_of(server, app.proc.pid)
    table = [Sample("npu_process_memory_bytes", {"device_id": "3", "pid": str(on_3.proc.pid)}, 1.0),
             Sample("npu_process_memory_bytes", {"device_id": "5", "pid": str(on_5.proc.pid)}, 1.0)]
    throttle = action(Throttle, server, {"factor": 0.25}, table)
    got = throttle.run(request({"device_id": "3"}))
    assert got.outcome == "success", got.output
    assert got.output == f"a (pid {on_3.proc.pid}, uid {os.getuid()}): concurrency 8 -> 2"
    assert on_3.limit_changes(1) == [2]
    assert throttle.revert(request({"device_id": "3"})).outcome == "success"
    assert on_3.limit_changes(1) == [8]
    assert on_5.limit_changes(1, seconds=0.5) == []  # the other device's app was left alone
    assert throttle.target(request({"device_id": "3"})) == "device_id:3"

    empty = action(EmptyCache, server, {}, table)
    got = empty.run(request({"device_id": "5"}))
    assert got.output.endswith("reserved 8192 MiB -> 5120 MiB (freed 3072 MiB)")
    assert empty.run(request({"device_id": "7"})).outcome == "skipped"
    dry = empty.run(request({"device_id": "5"}, dry_run=True))
    assert (dry.outcome, dry.output) == ("dry-run", f"would free the cached device memory of b (pid {on_5.proc.pid}, "
                                                    f"uid {os.getuid()})")


def test_actions_by_app_name_by_hello_devices_and_by_pid(server: ControlServer, start_app: Callable[..., App]) -> None:
    a, b = start_app("serving", "2"), start_app("other", "6")
    for app in (a, b):
        session_of(server, app.proc.pid)
    by_name = action(EmptyCache, server, {"app": "other"}, [])
    assert by_name.run(request({"device_id": "2"})).output.startswith(f"other (pid {b.proc.pid}")
    by_hello = action(EmptyCache, server, {}, [])
    assert by_hello.run(request({"device_id": "2"})).output.startswith(f"serving (pid {a.proc.pid}")
    assert by_hello.run(request({"pid": str(b.proc.pid)})).output.startswith(f"other (pid {b.proc.pid}")
    with pytest.raises(ValueError, match="exactly one of factor"):
        action(Throttle, server, {}, [])


def test_without_the_control_socket_app_actions_fail_with_the_reason() -> None:
    ctx = PluginContext("act", "empty_cache", {"app": "x", "process_metric": "m", "device_label": "device_id"})
    got = EmptyCache(ctx).run(request({}))
    assert (got.outcome, got.output) == ("failure", "the agent does not listen for apps ([control] enabled = false)")
