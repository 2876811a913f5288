"""DCMI return codes (libdcmi.so, and the ``ret is <code>`` that npu-smi prints), in words an operator can act on.

npu-smi and DCMI fail with a bare number: ``dcmi module initialize failed. ret is -8005``.
The number alone sends people searching; the usual cause (a driver upgraded without a
reboot, a device held by another container, a device not mapped into this container)
is what they need. So every code of the DCMI header carries its name, what it means,
and, for the codes operators actually meet, the cause that is behind it most of the time.

Both sources import this table: the npu-smi parser (:mod:`npuagent_ascend.npusmi`) and
the DCMI binding. ``describe(code) -> str`` and ``NAMES`` are their interface and stay stable.

Source: the DCMI header (``DCMI_ERROR_CODE_BASE = -8000``), the DSMI-to-DCMI mapping in
libdcmi (anything it does not know becomes -8005, which is why -8005 is a catch-all), and
the causes reported by mind-cluster and vllm-ascend maintainers (see the reference notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["CODES", "NAMES", "ReturnCode", "describe", "name"]


@dataclass(frozen=True)
class ReturnCode:
    """One DCMI return code: its header name, what it means, and its usual cause where one is known."""

    code: int
    name: str
    meaning: str
    #: what is behind it most of the time, for the codes operators meet; None where nothing is known
    cause: Optional[str] = None


_TABLE = (
    ReturnCode(0, "DCMI_OK", "success"),
    ReturnCode(-8001, "DCMI_ERR_CODE_INVALID_PARAMETER", "an invalid parameter was passed",
               "a card or chip id that does not exist here, or a caller built for another DCMI version"),
    ReturnCode(-8002, "DCMI_ERR_CODE_OPER_NOT_PERMITTED", "the operation is not permitted",
               "the caller is neither root nor in the driver's run-user group (HwHiAiUser), or the call needs root"),
    ReturnCode(-8003, "DCMI_ERR_CODE_MEM_OPERATE_FAIL", "a memory operation inside the library failed"),
    ReturnCode(-8004, "DCMI_ERR_CODE_SECURE_FUN_FAIL", "a secure C library function inside the library failed"),
    ReturnCode(-8005, "DCMI_ERR_CODE_INNER_ERR",
               "an internal driver error (the catch-all for any driver error without a code of its own)",
               "the driver or firmware was upgraded without a reboot, the device is held by another container or "
               "process, or the caller cannot open /dev/davinci* (not mapped into the container, or no permission)"),
    ReturnCode(-8006, "DCMI_ERR_CODE_TIME_OUT", "the driver timed out waiting for the device",
               "a device that is hung, resetting or overloaded"),
    ReturnCode(-8007, "DCMI_ERR_CODE_INVALID_DEVICE_ID", "the device id is invalid",
               "the device is not visible here: inside a container its /dev/davinci* node is not mapped"),
    ReturnCode(-8008, "DCMI_ERR_CODE_DEVICE_NOT_EXIST", "the device does not exist",
               "inside a container its /dev/davinci* node is not mapped, or the card has dropped off the bus"),
    ReturnCode(-8009, "DCMI_ERR_CODE_IOCTL_FAIL", "an ioctl to the driver failed",
               "the driver is not loaded, or the user-space library does not match the loaded driver"),
    ReturnCode(-8010, "DCMI_ERR_CODE_SEND_MSG_FAIL", "sending a message to the device failed",
               "a device that is hung, resetting or has dropped off the bus"),
    ReturnCode(-8011, "DCMI_ERR_CODE_RECV_MSG_FAIL", "receiving a message from the device failed",
               "a device that is hung, resetting or has dropped off the bus"),
    ReturnCode(-8012, "DCMI_ERR_CODE_NOT_REDAY", "the device is not ready",
               "the device is still starting, is being reset, or has dropped off the bus (retry in a few seconds)"),
    ReturnCode(-8013, "DCMI_ERR_CODE_NOT_SUPPORT_IN_CONTAINER", "the operation is not supported inside a container",
               "it was called inside a container; run it on the host or in a privileged container"),
    ReturnCode(-8014, "DCMI_ERR_CODE_FILE_OPERATE_FAIL", "a file operation failed",
               "a driver file (such as /etc/ascend_install.info or the driver's version.info) is missing or "
               "not mounted into the container"),
    ReturnCode(-8015, "DCMI_ERR_CODE_RESET_FAIL", "resetting the device failed"),
    ReturnCode(-8016, "DCMI_ERR_CODE_ABORT_OPERATE", "the operation was aborted"),
    ReturnCode(-8017, "DCMI_ERR_CODE_IS_UPGRADING", "the device is being upgraded",
               "a firmware upgrade is in progress; wait for it to finish"),
    ReturnCode(-8020, "DCMI_ERR_CODE_RESOURCE_OCCUPIED", "the device is occupied",
               "another container or process holds the device (a non-privileged container given /dev/davinciN "
               "takes it exclusively)"),
    ReturnCode(-8022, "DCMI_ERR_CODE_PARTITION_NOT_RIGHT", "the device's partition (vNPU split) does not allow it"),
    ReturnCode(-8023, "DCMI_ERR_CODE_CONFIG_INFO_NOT_EXIST", "the requested configuration does not exist"),
    ReturnCode(-8255, "DCMI_ERR_CODE_NOT_SUPPORT", "the operation is not supported on this chip or product",
               "a query this chip family does not have: treat it as unsupported rather than retrying"),
)

#: every known code, code -> :class:`ReturnCode`
CODES: Dict[int, ReturnCode] = {rc.code: rc for rc in _TABLE}
#: code -> the DCMI header's name, e.g. ``NAMES[-8020] == "DCMI_ERR_CODE_RESOURCE_OCCUPIED"``
NAMES: Dict[int, str] = {rc.code: rc.name for rc in _TABLE}


def name(code: int) -> str:
    """The header name of ``code``, or ``"DCMI error <code>"`` for a code the table does not know."""
    return NAMES.get(code, f"DCMI error {code}")


def describe(code: int) -> str:
    """One sentence: what ``code`` means and, where known, its usual cause.

    It carries neither the number nor the name, so that callers can put both in front
    (``"... failed (-8020 DCMI_ERR_CODE_RESOURCE_OCCUPIED): <describe>"``) without repeating them.
    """
    rc = CODES.get(code)
    if rc is None:
        return f"a return code this table does not know ({code}); see the DCMI documentation of this driver version."
    if rc.cause is None:
        return f"{rc.meaning}."
    return f"{rc.meaning}; usually {rc.cause}."
