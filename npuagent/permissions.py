"""Refuse configuration and plugin files that a non-root user could change.

An agent running as root executes what its configuration says (commands,
restarts) and imports its plugins' code: whoever can write those files can run
code as root. Like sshd's StrictModes, a file is refused when it, or a directory
above it, can be written by anyone but root. A world-writable directory with the
sticky bit (``/tmp``) is allowed above it, since there nobody but the owner can
replace a root-owned entry.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Iterable, List, Optional


def _why_writable(path: str, st: os.stat_result, is_dir: bool) -> Optional[str]:
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0:
        return f"it is owned by uid {st.st_uid}, not root"
    if mode & stat.S_IWGRP and st.st_gid != 0:
        return f"it is writable by group {st.st_gid} (mode {mode:04o})"
    if mode & stat.S_IWOTH and not (is_dir and mode & stat.S_ISVTX):
        return f"it is writable by every user (mode {mode:04o})"
    return None


def insecure_reason(path: str, lstat: Callable[[str], os.stat_result] = os.stat) -> Optional[str]:
    """Why ``path`` must not be trusted by a root process, or ``None`` when it may."""
    path = os.path.abspath(path)
    try:
        st = lstat(path)
    except OSError as e:
        return f"cannot check it: {e.strerror}"
    why = _why_writable(path, st, stat.S_ISDIR(st.st_mode))
    if why:
        return why
    parent = os.path.dirname(path)
    while True:
        try:
            st = lstat(parent)
        except OSError as e:
            return f"cannot check directory {parent}: {e.strerror}"
        why = _why_writable(parent, st, True)
        if why:
            return f"directory {parent} can be changed by others: {why}"
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)


def check_files(paths: Iterable[str], what: str) -> List[str]:
    """Messages for every file of ``paths`` that a root agent must refuse."""
    problems = []
    for path in paths:
        why = insecure_reason(path)
        if why:
            problems.append(f"{path}: refusing {what} that a non-root user can change: {why}")
    return problems


def running_as_root() -> bool:
    return os.geteuid() == 0
