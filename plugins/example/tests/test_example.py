"""Tests of the example plugin: its types built through its own hooks, as the agent builds them."""

from __future__ import annotations

import datetime
import json
import os
import socket
import stat
import time
import types
from typing import Any, Dict, Iterator, List, Mapping, Optional

import npuagent_example
import pytest

from npuagent.context import PluginContext
from npuagent.model import ActionRequest, ActionResult, ActionType, CollectorType, Sample
from npuagent.options import validate_table
from npuagent.plugins import Plugins


def collector_type() -> CollectorType:
    (kind,) = npuagent_example.npuagent_collector_types()
    return kind


def action_type() -> ActionType:
    (kind,) = npuagent_example.npuagent_action_types()
    return kind


def plugin_options(table: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    values, errors = validate_table(table or {}, npuagent_example.npuagent_config_options())
    assert errors == []
    return values


def build(kind: Any, table: Mapping[str, Any], plugin_table: Optional[Mapping[str, Any]] = None) -> Any:
    """Validate ``table`` as the agent does and call the type's factory with the result."""
    options, errors = validate_table(table, kind.options)
    assert errors == []
    ctx = PluginContext(name=kind.name, type=kind.name, options=options, plugin_options=plugin_options(plugin_table),
                        timeout=getattr(kind, "timeout", 10.0))
    return kind.factory(ctx)


@pytest.fixture
def locked_dir(tmp_path: Any) -> Iterator[Any]:
    """A directory holding a file ``f``, that this process may not enter; skips where it may (root)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_text("")
    locked.chmod(0)
    try:
        if os.access(locked, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            pytest.skip("this process bypasses file permissions (root)")
        yield locked
    finally:
        locked.chmod(0o700)


def by_name(samples: List[Sample]) -> Dict[str, Dict[str, Sample]]:
    """name -> path -> sample, failing on duplicates."""
    out: Dict[str, Dict[str, Sample]] = {}
    for s in samples:
        assert s.labels["path"] not in out.setdefault(s.name, {}), f"duplicate {s}"
        out[s.name][s.labels["path"]] = s
    return out


# -- the collector type -------------------------------------------------------


def test_collector_type_declaration() -> None:
    kind = collector_type()
    assert kind.name == "example-files"
    assert (kind.interval, kind.timeout, kind.enabled_by_default) == (30.0, 5.0, True)
    assert {m.name for m in kind.metrics} == {
        "example_file_exists", "example_file_size_bytes", "example_file_age_seconds"}


def test_default_paths() -> None:
    options, errors = validate_table({}, collector_type().options)
    assert errors == []
    assert options["paths"] == ("/etc/hostname", "/etc/os-release")


def test_existing_file(tmp_path: Any) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 1234)
    mtime = time.time() - 3600
    os.utime(path, (mtime, mtime))

    before = time.time()
    samples = build(collector_type(), {"paths": [str(path)]}).collect()
    after = time.time()

    got = by_name(samples)
    assert set(got) == {"example_file_exists", "example_file_size_bytes", "example_file_age_seconds"}
    assert got["example_file_exists"][str(path)].value == 1.0
    assert got["example_file_size_bytes"][str(path)].value == os.path.getsize(path) == 1234
    age = got["example_file_age_seconds"][str(path)].value
    assert age >= 0
    assert before - os.stat(path).st_mtime <= age <= after - os.stat(path).st_mtime
    assert all(s.labels == {"path": str(path)} and s.timestamp is None for s in samples)


def test_missing_file_is_a_measurement(tmp_path: Any) -> None:
    missing = str(tmp_path / "nope")
    below_a_file = str(tmp_path / "file" / "nope")
    (tmp_path / "file").write_text("")
    samples = build(collector_type(), {"paths": [missing, below_a_file]}).collect()
    assert samples == [
        Sample("example_file_exists", {"path": missing}, 0.0),
        Sample("example_file_exists", {"path": below_a_file}, 0.0),
    ]


def test_one_sample_set_per_path_in_order(tmp_path: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("aa")
    samples = build(collector_type(), {"paths": [str(a), str(b)]}).collect()
    assert [(s.name, s.labels["path"]) for s in samples] == [
        ("example_file_exists", str(a)),
        ("example_file_size_bytes", str(a)),
        ("example_file_age_seconds", str(a)),
        ("example_file_exists", str(b)),
    ]


def test_unreadable_path_raises(locked_dir: Any) -> None:
    with pytest.raises(PermissionError):
        build(collector_type(), {"paths": [str(locked_dir / "f")]}).collect()


def test_plugin_option_label_host(tmp_path: Any) -> None:
    (tmp_path / "f").write_text("")
    samples = build(collector_type(), {"paths": [str(tmp_path / "f")]}, {"label_host": True}).collect()
    assert len(samples) == 3
    assert all(s.labels == {"host": socket.gethostname(), "path": str(tmp_path / "f")} for s in samples)


def test_plugin_option_default_is_off() -> None:
    assert plugin_options() == {"label_host": False}


def test_instances_share_no_state(tmp_path: Any) -> None:
    (tmp_path / "a").write_text("")
    first = build(collector_type(), {"paths": [str(tmp_path / "a")]}, {"label_host": True})
    second = build(collector_type(), {"paths": [str(tmp_path / "b")]})
    assert {s.labels["path"] for s in first.collect()} == {str(tmp_path / "a")}
    assert second.collect() == [Sample("example_file_exists", {"path": str(tmp_path / "b")}, 0.0)]


@pytest.mark.parametrize(
    ("table", "path", "message"),
    [
        ({"paths": "/etc/hostname"}, ("paths",), "expected an array, each item an absolute path, got '/etc/hostname'"),
        ({"paths": ["/etc/hostname", "etc/os-release"]}, ("paths", 1),
         "expected an absolute path, got 'etc/os-release'"),
        ({"path": ["/etc/hostname"]}, ("path",), 'unknown key (did you mean "paths"?)'),
    ],
)
def test_bad_collector_options_are_rejected(table: Dict[str, Any], path: tuple, message: str) -> None:
    _, errors = validate_table(table, collector_type().options)
    assert errors == [(path, message)]


# -- the action type ----------------------------------------------------------


def request(**changes: Any) -> ActionRequest:
    """A request as the agent builds it: labels frozen in a read-only mapping."""
    labels = types.MappingProxyType({"mount": "/data"})
    fields: Dict[str, Any] = dict(action="append-to-file", rule="disk-full", labels=labels,
                                  state="firing", value=97.5, summary="/data at 98%")
    fields.update(changes)
    return ActionRequest(**fields)


def test_append_writes_one_json_line_per_request(tmp_path: Any) -> None:
    log = tmp_path / "actions.jsonl"
    action = build(action_type(), {"path": str(log)})

    before = time.time()
    first = action.run(request())
    second = action.run(request(state="inactive", value=None, labels={}))

    assert isinstance(first, ActionResult)
    assert (first.action, first.outcome, first.ok, first.request) == ("append-to-file", "success", True, request())
    assert first.output == f"appended to {log}"
    assert first.duration >= 0
    assert second.outcome == "success"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2
    stamp = lines[0].pop("time")
    assert lines[0] == {"action": "append-to-file", "rule": "disk-full", "state": "firing",
                        "labels": {"mount": "/data"}, "value": 97.5, "summary": "/data at 98%"}
    assert abs(datetime.datetime.fromisoformat(stamp).timestamp() - before) < 60
    assert (lines[1]["state"], lines[1]["value"], lines[1]["labels"]) == ("inactive", None, {})


def test_append_creates_the_file_0600(tmp_path: Any) -> None:
    log = tmp_path / "actions.jsonl"
    old = os.umask(0)
    try:
        build(action_type(), {"path": str(log)}).run(request())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_append_keeps_what_is_there(tmp_path: Any) -> None:
    log = tmp_path / "actions.jsonl"
    log.write_text('{"earlier": true}\n')
    build(action_type(), {"path": str(log)}).run(request())
    assert log.read_text().startswith('{"earlier": true}\n{')


def test_non_finite_value_still_valid_json(tmp_path: Any) -> None:
    log = tmp_path / "actions.jsonl"
    build(action_type(), {"path": str(log)}).run(request(value=float("nan")))
    assert json.loads(log.read_text())["value"] == "nan"


def test_dry_run_writes_nothing(tmp_path: Any) -> None:
    log = tmp_path / "actions.jsonl"
    result = build(action_type(), {"path": str(log)}).run(request(dry_run=True))
    assert (result.outcome, result.ok) == ("dry-run", True)
    assert result.output.startswith(f"would append to {log}: ")
    assert json.loads(result.output.split(": ", 1)[1])["rule"] == "disk-full"
    assert not log.exists()


def test_missing_directory_is_a_failure_not_an_exception(tmp_path: Any) -> None:
    log = tmp_path / "no-such-dir" / "actions.jsonl"
    result = build(action_type(), {"path": str(log)}).run(request())
    assert (result.outcome, result.ok) == ("failure", False)
    assert result.output == f"cannot append to {log}: No such file or directory"
    assert result.request == request()


def test_path_below_a_file_is_a_failure(tmp_path: Any) -> None:
    (tmp_path / "file").write_text("")
    result = build(action_type(), {"path": str(tmp_path / "file" / "actions.jsonl")}).run(request())
    assert result.outcome == "failure"
    assert result.output == f"cannot append to {tmp_path}/file/actions.jsonl: Not a directory"


def test_unwritable_directory_is_a_failure(locked_dir: Any) -> None:
    result = build(action_type(), {"path": str(locked_dir / "actions.jsonl")}).run(request())
    assert result.outcome == "failure"
    assert result.output == f"cannot append to {locked_dir}/actions.jsonl: Permission denied"


def test_symlink_is_not_followed(tmp_path: Any) -> None:
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "link").symlink_to(target)
    result = build(action_type(), {"path": str(tmp_path / "link")}).run(request())
    assert result.outcome == "failure"
    assert target.read_text() == ""


@pytest.mark.parametrize(
    ("table", "errors"),
    [
        ({}, [((), 'missing required key "path" (an absolute path)')]),
        ({"path": "actions.jsonl"}, [(("path",), "expected an absolute path, got 'actions.jsonl'")]),
        ({"path": 7}, [(("path",), "expected an absolute path, got 7")]),
    ],
)
def test_bad_action_options_are_rejected(table: Dict[str, Any], errors: list) -> None:
    assert validate_table(table, action_type().options)[1] == errors


def test_bad_plugin_option_is_rejected() -> None:
    _, errors = validate_table({"label_host": "yes"}, npuagent_example.npuagent_config_options())
    assert errors == [(("label_host",), "expected true or false, got 'yes'")]


# -- wiring ---------------------------------------------------------------------


def test_registered_on_a_fresh_manager() -> None:
    plugins = Plugins()
    plugins.load(entry_points=False, builtins=())
    plugins.register(npuagent_example, "example", "npuagent-example", npuagent_example.__version__)
    try:
        plugins.check()
        assert plugins.collector_types()["example-files"][0] == "example"
        assert plugins.action_types()["example-append"][0] == "example"
        assert [o.name for o in plugins.config_options()["example"]] == ["label_host"]
        assert plugins.infos["example"].hooks == [
            "npuagent_action_types", "npuagent_collector_types", "npuagent_config_options"]
        assert not plugins.errors
    finally:
        plugins.unregister("example")
    assert "example-files" not in plugins.collector_types()


def test_installed_distribution_exposes_the_entry_point() -> None:
    from importlib import metadata

    try:
        dist = metadata.distribution("npuagent-example")
    except metadata.PackageNotFoundError:
        pytest.fail("npuagent-example is not installed: pip install -e plugins/example --no-deps")
    found = [(ep.group, ep.name, ep.value) for ep in dist.entry_points if ep.group == "npuagent"]
    assert found == [("npuagent", "example", "npuagent_example")]
    assert dist.version == npuagent_example.__version__
