"""The DCMI return-code table: every code of the header, and sentences an operator can act on."""

from __future__ import annotations

import inspect

import pytest
from npuagent_ascend import errors

# dcmi.md §5, as the header defines them (DCMI_ERROR_CODE_BASE = -8000)
HEADER = {
    0: "DCMI_OK",
    -8001: "DCMI_ERR_CODE_INVALID_PARAMETER",
    -8002: "DCMI_ERR_CODE_OPER_NOT_PERMITTED",
    -8003: "DCMI_ERR_CODE_MEM_OPERATE_FAIL",
    -8004: "DCMI_ERR_CODE_SECURE_FUN_FAIL",
    -8005: "DCMI_ERR_CODE_INNER_ERR",
    -8006: "DCMI_ERR_CODE_TIME_OUT",
    -8007: "DCMI_ERR_CODE_INVALID_DEVICE_ID",
    -8008: "DCMI_ERR_CODE_DEVICE_NOT_EXIST",
    -8009: "DCMI_ERR_CODE_IOCTL_FAIL",
    -8010: "DCMI_ERR_CODE_SEND_MSG_FAIL",
    -8011: "DCMI_ERR_CODE_RECV_MSG_FAIL",
    -8012: "DCMI_ERR_CODE_NOT_REDAY",  # sic, as the header spells it
    -8013: "DCMI_ERR_CODE_NOT_SUPPORT_IN_CONTAINER",
    -8014: "DCMI_ERR_CODE_FILE_OPERATE_FAIL",
    -8015: "DCMI_ERR_CODE_RESET_FAIL",
    -8016: "DCMI_ERR_CODE_ABORT_OPERATE",
    -8017: "DCMI_ERR_CODE_IS_UPGRADING",
    -8020: "DCMI_ERR_CODE_RESOURCE_OCCUPIED",
    -8022: "DCMI_ERR_CODE_PARTITION_NOT_RIGHT",
    -8023: "DCMI_ERR_CODE_CONFIG_INFO_NOT_EXIST",
    -8255: "DCMI_ERR_CODE_NOT_SUPPORT",
}


def test_names_are_the_header():
    assert errors.NAMES == HEADER
    assert set(errors.CODES) == set(HEADER)
    assert all(rc.code == code for code, rc in errors.CODES.items())


def test_interface_other_modules_import_stays():
    """The DCMI binding imports ``describe(code: int) -> str`` and ``NAMES: Dict[int, str]``."""
    signature = inspect.signature(errors.describe)
    assert list(signature.parameters) == ["code"]
    assert isinstance(errors.describe(-8005), str)
    assert errors.name(-8020) == "DCMI_ERR_CODE_RESOURCE_OCCUPIED"
    assert errors.name(-9999) == "DCMI error -9999"


@pytest.mark.parametrize("code", sorted(HEADER))
def test_every_description_is_one_sentence(code):
    text = errors.describe(code)
    assert text.endswith(".") and text.count(". ") == 0 and "\n" not in text
    # callers put "<code> <NAME>" in front: it is not repeated
    assert str(code) not in text or code == 0
    assert HEADER[code] not in text


@pytest.mark.parametrize(("code", "words"), [
    (-8005, ("internal", "upgraded without a reboot", "held by another container", "/dev/davinci")),
    (-8020, ("occupied", "another container", "exclusively")),
    (-8012, ("not ready", "reset")),
    (-8013, ("container", "privileged")),
    (-8007, ("invalid", "/dev/davinci", "not mapped")),
    (-8008, ("does not exist", "not mapped")),
    (-8002, ("not permitted", "root")),
    (-8255, ("not supported", "unsupported")),
])
def test_codes_operators_meet_say_their_usual_cause(code, words):
    text = errors.describe(code)
    for word in words:
        assert word in text, (code, word, text)
    assert "usually" in text


def test_a_code_without_cause_says_its_meaning_only():
    assert errors.describe(-8015) == "resetting the device failed."
    assert errors.describe(0) == "success."


def test_unknown_code_is_described_not_raised():
    text = errors.describe(-8099)
    assert "-8099" in text and "does not know" in text
    assert errors.describe(12345).endswith(".")
