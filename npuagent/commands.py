"""Run a command as an argv list, with a hard deadline, and kill it when it overruns.

There is no shell anywhere in npuagent: values that come from labels or logs are
passed as separate arguments and can never be parsed as shell syntax. A command
is started in its own session, so that on timeout the whole process group
(npu-smi forks helpers) is killed, not only the direct child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Mapping, MutableSet, Optional, Sequence


class CommandNotFound(OSError):
    """The executable does not exist or is not executable."""


class CommandTimeout(TimeoutError):
    """The command ran past its deadline and was killed; ``result`` holds what it printed."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(result.describe())
        self.result = result


@dataclass(frozen=True)
class CommandResult:
    argv: Sequence[str]
    returncode: Optional[int]
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One line for a log or an error: what ran and how it ended."""
        name = os.path.basename(self.argv[0]) if self.argv else "?"
        if self.timed_out:
            return f"{name} killed after {self.duration:.1f}s timeout"
        tail = (self.stderr or self.stdout).strip().splitlines()
        detail = f": {tail[-1][:200]}" if tail else ""
        return f"{name} exited with status {self.returncode}{detail}"


def _as_user(user: Optional[str]) -> dict:
    """Popen's user/group/extra_groups for ``user``, so a root agent can run a command as someone else."""
    if not user:
        return {}
    import pwd

    entry = pwd.getpwnam(user)  # KeyError: no such user, reported by the caller
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def run(
    argv: Sequence[str],
    timeout: float,
    env: Optional[Mapping[str, str]] = None,
    input: Optional[str] = None,
    running: Optional[MutableSet[subprocess.Popen]] = None,
    lock: Optional[threading.Lock] = None,
    user: Optional[str] = None,
) -> CommandResult:
    """Run ``argv`` for at most ``timeout`` seconds and return what it printed.

    :param running: a set the child is kept in while it runs, so that an owner
        that gives up on the caller (the agent abandoning a hung collection) can
        kill it from another thread.
    :param user: run as this user (and its primary group); the agent must be root for it.
    :raises CommandNotFound: the program does not exist or cannot be executed.
    """
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv must be a non-empty list of strings, not {argv!r}")
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            text=True,
            errors="replace",
            **_as_user(user),
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
        raise CommandNotFound(e.errno, f"cannot run {argv[0]}: {e.strerror}") from None
    if running is not None:
        with lock or threading.Lock():
            running.add(proc)
    try:
        try:
            out, err = proc.communicate(input=input, timeout=max(timeout, 0.001))
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            timed_out = True
    finally:
        if running is not None:
            with lock or threading.Lock():
                running.discard(proc)
    return CommandResult(list(argv), None if timed_out else proc.returncode, out or "", err or "",
                         time.monotonic() - start, timed_out)
