"""The libdcmi.so test double (``dcmi_double/libdcmi.c``): where its source is, and its test hooks."""

from __future__ import annotations

import ctypes
import os
import textwrap
from typing import Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "dcmi_double", "libdcmi.c")

#: what the older-driver build leaves out (-DOMIT_<NAME>)
OMITTED = (
    "dcmi_subscribe_fault_event",
    "dcmi_get_device_hbm_info",
    "dcmi_get_device_id_in_card",
    "dcmi_get_device_memory_info_v3",
    "dcmi_get_device_network_health",
    "dcmi_get_driver_version",
)


class Double:
    """One fresh copy of the double, its script, and its test hooks."""

    def __init__(self, path: str, script_path: str) -> None:
        self.path = path
        self.script_path = script_path
        self.c = ctypes.CDLL(path)  # the same handle the binding gets (dlopen counts references)
        self.c.dcmi_double_calls.argtypes = [ctypes.c_char_p]
        self.c.dcmi_double_sizeof.argtypes = [ctypes.c_char_p]
        self.c.dcmi_double_sizeof.restype = ctypes.c_long
        self.c.dcmi_double_offsetof.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self.c.dcmi_double_offsetof.restype = ctypes.c_long

    def calls(self, name: str) -> int:
        return self.c.dcmi_double_calls(name.encode())

    def overlaps(self) -> int:
        return self.c.dcmi_double_overlaps()

    def reload(self) -> None:
        """Make the double read its script again, as if the machine changed under a running agent."""
        self.c.dcmi_double_reload()

    def script(self, text: str) -> None:
        with open(self.script_path, "w") as f:
            f.write(textwrap.dedent(text))


def script_910b(cards: Iterable[int]) -> str:
    """The script of 910B3 cards, one chip each, all alike: 41 C, 95.3 W, AI core 40 %, 3400 of 65536 MB HBM."""
    return f"""
cards = {", ".join(str(n) for n in cards)}
dcmi_version = 25.2.0
driver_version = 25.2.0
default.temperature = 41
default.power = 953
default.health = 0
default.util.13 = 50
default.util.2 = 40
default.util.12 = 30
default.util.3 = 5
default.util.10 = 20
default.freq.7 = 1800
default.hbm = 65536, 1600, 3400, 38, 7
default.mem = 0, 0, 0, 0, 0, 0, 0
default.ecc.0 = 1, 0, 0, 0, 0, 0, 0, 0, 0
default.ecc.2 = 1, 0, 0, 0, 0, 0, 0, 0, 0
default.network = 0
default.pcie = 0x19e5, 0x200, 0xd802, 0x100, 0, 0xc1, 0, 0
"""
