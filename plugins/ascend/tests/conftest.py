"""Fixtures shared by the Ascend plugin's tests: the libdcmi.so test double, compiled with gcc."""

from __future__ import annotations

import shutil
import subprocess
from itertools import count
from typing import Any, Callable, Dict, List

import pytest
from libdcmi_double import OMITTED, SOURCE, Double
from npuagent_ascend.dcmi import Dcmi


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The double compiled twice: "full", and "old" (a driver without OMITTED)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the libdcmi.so test double cannot be compiled")
    out = tmp_path_factory.mktemp("dcmi_double")
    built = {}
    for variant, defines in (("full", []), ("old", [f"-DOMIT_{name.upper()}" for name in OMITTED])):
        target = str(out / f"libdcmi-{variant}.so")
        subprocess.run([gcc, "-shared", "-fPIC", "-pthread", "-Wall", "-Werror", *defines, "-o", target, SOURCE],
                       check=True, capture_output=True, text=True)
        built[variant] = target
    return built


_copies = count()


@pytest.fixture
def make_double(builds: Dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Double]:
    """``make_double(script, variant="full")``: a copy of the built library of its own, and its script in place."""

    def make(script: str, variant: str = "full") -> Double:
        path = str(tmp_path / f"libdcmi-{variant}-{next(_copies)}.so")
        shutil.copy(builds[variant], path)
        script_path = str(tmp_path / f"script-{next(_copies)}.txt")
        monkeypatch.setenv("DCMI_DOUBLE_SCRIPT", script_path)  # read by the double's dcmi_init
        d = Double(path, script_path)
        d.script(script)
        return d

    return make


@pytest.fixture
def opened() -> Any:
    """Dcmi instances made by a test, closed after it."""
    made: List[Dcmi] = []

    def open_(*args: Any, **kwargs: Any) -> Dcmi:
        d = Dcmi(*args, **kwargs)
        made.append(d)
        return d

    yield open_
    for d in made:
        d.close()


