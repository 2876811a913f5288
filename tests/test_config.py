"""Configuration: the broken-configuration corpus, conf.d merging, root-owned files, frozen results."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import subprocess
import sys

import pytest

from npuagent import cli, config, permissions
from npuagent.options import OptionError, format_duration, parse_duration
from npuagent.tomllines import key_lines

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
BROKEN = sorted(glob.glob(os.path.join(HERE, "configs", "broken", "*.toml")))
EXPECT = re.compile(rb"^# expect (\d+) (\S*): (.*)$", re.M)


def run_check(path: str, capsys: pytest.CaptureFixture) -> tuple:
    code = cli.main(["check", "-c", path])
    out, err = capsys.readouterr()
    return code, out, err


def test_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 25


@pytest.mark.parametrize("path", BROKEN, ids=[os.path.basename(p) for p in BROKEN])
def test_broken_configuration_is_reported_with_file_line_and_key(path: str, capsys: pytest.CaptureFixture) -> None:
    with open(path, "rb") as f:
        expectations = EXPECT.findall(f.read())
    assert expectations, f"{path} has no '# expect LINE KEY: MESSAGE' line"
    code, out, err = run_check(path, capsys)
    assert code == 2
    assert "OK" not in out
    for line, key, message in expectations:
        key, message = key.decode(), message.decode()
        where = f"{path}:{int(line)}: {key}: " if key else f"{path}:{int(line)}: "
        assert where + message in err, f"expected {where + message!r} in:\n{err}"
    assert re.search(r"FAILED: \d+ errors?", err)


def test_all_errors_are_reported_together(capsys: pytest.CaptureFixture) -> None:
    path = os.path.join(HERE, "configs", "broken", "31-many-errors-at-once.toml")
    _code, _out, err = run_check(path, capsys)
    assert "FAILED: 3 errors" in err
    # sorted by line, so the first screenful reads top to bottom
    lines = [int(m) for m in re.findall(r"\.toml:(\d+):", err)]
    assert lines == sorted(lines) == [5, 8, 11]


def test_check_through_the_real_command_exits_2_and_0(tmp_path) -> None:
    broken = os.path.join(HERE, "configs", "broken", "05-unknown-key.toml")
    result = subprocess.run([sys.executable, "-m", "npuagent", "check", "-c", broken],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f'{broken}:4: agent.log_levle: unknown key (did you mean "log_level"?)' in result.stderr
    good = os.path.join(ROOT, "etc", "npuagent.toml")
    result = subprocess.run([sys.executable, "-m", "npuagent", "check", "-c", good],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 1 file(s)")


def test_shipped_configuration_is_valid(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_check(os.path.join(ROOT, "etc", "npuagent.toml"), capsys)
    assert code == 0, err
    assert out.startswith("OK:")


def test_an_empty_file_runs_on_defaults(tmp_path) -> None:
    path = tmp_path / "npuagent.toml"
    path.write_text("")
    _plugins, cfg = cli.load(str(path))
    assert cfg.agent["log_level"] == "info"
    assert cfg.listen == ("127.0.0.1", 9740)
    host = [c for c in cfg.collectors if c.name == "host"]
    assert host and host[0].interval == 10.0 and host[0].timeout == 5.0


def test_missing_default_file_means_defaults_but_missing_explicit_file_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent" / "npuagent.toml"))
    src = config.read_sources(None, strict=False)
    assert src.problems == [] and src.files == []
    src = config.read_sources(str(tmp_path / "nope.toml"), strict=False)
    assert src.problems and "cannot read" in src.problems[0].message


def test_conf_d_files_merge_in_name_order_and_errors_name_the_drop_in(tmp_path) -> None:
    main = tmp_path / "npuagent.toml"
    main.write_text('[agent]\nlog_level = "info"\n\n[collectors.host]\ninterval = "10s"\n')
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "20-late.toml").write_text('[agent]\nlog_level = "error"\n')
    (tmp_path / "conf.d" / "10-early.toml").write_text(
        '[agent]\nlog_level = "debug"\n[collectors.host]\ntimeout = "2s"\n')
    _plugins, cfg = cli.load(str(main))
    assert cfg.agent["log_level"] == "error"  # 20-late wins over 10-early and the main file
    host = next(c for c in cfg.collectors if c.name == "host")
    assert (host.interval, host.timeout) == (10.0, 2.0)  # tables merge key by key
    assert [os.path.basename(f) for f in cfg.files] == ["npuagent.toml", "10-early.toml", "20-late.toml"]

    (tmp_path / "conf.d" / "30-bad.toml").write_text('\n\n[collectors.host]\ninterval = "soon"\n')
    with pytest.raises(config.ConfigError) as e:
        cli.load(str(main))
    assert str(e.value).startswith(f"{tmp_path}/conf.d/30-bad.toml:4: collectors.host.interval: expected a duration")


def test_rules_of_several_files_add_up_with_their_own_lines(tmp_path) -> None:
    main = tmp_path / "npuagent.toml"
    main.write_text('[[rules]]\nname = "a"\ntype = "nosuch"\n')
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "rules.toml").write_text('\n[[rules]]\nname = "b"\n\ntype = "nosuchtoo"\n')
    src = config.read_sources(str(main), strict=False)
    assert [r["name"] for r in src.doc["rules"]] == ["a", "b"]
    assert src.at(("rules", 1, "type")) == (f"{tmp_path}/conf.d/rules.toml", 5)
    assert src.at(("rules", 0, "type")) == (str(main), 3)


def test_configuration_is_frozen(tmp_path) -> None:
    path = tmp_path / "npuagent.toml"
    path.write_text('[collectors.host]\nservices = [{ name = "a", process = "a" }]\n')
    _plugins, cfg = cli.load(str(path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agent = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.agent["log_level"] = "debug"  # type: ignore[index]
    host = next(c for c in cfg.collectors if c.name == "host")
    with pytest.raises(TypeError):
        host.options["services"][0]["name"] = "b"  # type: ignore[index]


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal applies to an agent running as root")
def test_root_refuses_a_configuration_file_others_can_write(tmp_path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "npuagent.toml"
    path.write_text('[agent]\nlog_level = "info"\n')
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o666)
    code, _out, err = run_check(str(path), capsys)
    assert code == 2
    assert f"{path}:1: refusing configuration that a non-root user can change: it is writable by every user" in err
    os.chmod(path, 0o644)
    (tmp_path / "conf.d").mkdir(mode=0o777)
    os.chmod(tmp_path / "conf.d", 0o777)
    code, _out, err = run_check(str(path), capsys)
    assert code == 2 and f"{tmp_path}/conf.d:1: refusing configuration" in err
    os.chmod(tmp_path / "conf.d", 0o755)
    os.chown(path, 1000, 1000)
    code, _out, err = run_check(str(path), capsys)
    assert code == 2 and "it is owned by uid 1000, not root" in err


def _fake_stat(table: dict):
    def lstat(path: str) -> os.stat_result:
        uid, gid, mode = table.get(path, (0, 0, 0o40755))
        return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    return lstat


def test_permission_rules_like_sshd_strict_modes() -> None:
    ok = _fake_stat({"/etc/npuagent/npuagent.toml": (0, 0, 0o100644)})
    assert permissions.insecure_reason("/etc/npuagent/npuagent.toml", ok) is None
    group = _fake_stat({"/etc/npuagent/npuagent.toml": (0, 50, 0o100664)})
    assert "writable by group 50" in permissions.insecure_reason("/etc/npuagent/npuagent.toml", group)
    root_group = _fake_stat({"/etc/npuagent/npuagent.toml": (0, 0, 0o100664)})
    assert permissions.insecure_reason("/etc/npuagent/npuagent.toml", root_group) is None
    parent = _fake_stat({"/etc/npuagent/npuagent.toml": (0, 0, 0o100644), "/etc/npuagent": (1000, 0, 0o40755)})
    assert "directory /etc/npuagent can be changed by others" in permissions.insecure_reason(
        "/etc/npuagent/npuagent.toml", parent)
    sticky = _fake_stat({"/tmp/x/npuagent.toml": (0, 0, 0o100644), "/tmp": (0, 0, 0o41777)})
    assert permissions.insecure_reason("/tmp/x/npuagent.toml", sticky) is None
    world_dir = _fake_stat({"/tmp/x/npuagent.toml": (0, 0, 0o100644), "/tmp": (0, 0, 0o40777)})
    assert "writable by every user" in permissions.insecure_reason("/tmp/x/npuagent.toml", world_dir)


@pytest.mark.parametrize("text,seconds", [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1w", 604800),
    ("1m30s500ms", 90.5), ("1.5h", 5400),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m", "5M", "1h1h", "30s5m", "-5s", "5s ", " ", "1e3s"])
def test_bad_durations(text: str) -> None:
    if text == "5s ":  # surrounding space is forgiven
        assert parse_duration(text) == 5
        return
    with pytest.raises(OptionError):
        parse_duration(text)


def test_key_lines_follow_tables_arrays_and_multiline_strings() -> None:
    text = (
        '# comment [not.a.table]\n'          # 1
        '[agent]\n'                          # 2
        'note = """a\n[fake]\nkey = 1"""\n'  # 3-5
        'log_level = "info" # c\n'           # 6
        '[[rules]]\n'                        # 7
        'name = "a"\n'                       # 8
        'labels = { team = "x",\n'           # 9 (not valid TOML 1.0 across lines, scanned anyway)
        '}\n'                                # 10
        '[[rules]]\n'                        # 11
        "'quoted key' = [\n"                 # 12
        '  1,\n'                             # 13
        '  2,\n'                             # 14
        ']\n'                                # 15
        '[actions."page ops"]\n'             # 16
        'urls.primary = "x"\n'               # 17
    )
    lines = key_lines(text)
    assert lines[("agent", "note")] == 3
    assert lines[("agent", "log_level")] == 6
    assert ("fake",) not in lines
    assert lines[("rules", 0)] == 7 and lines[("rules", 0, "name")] == 8
    assert lines[("rules", 0, "labels", "team")] == 9
    assert lines[("rules", 1)] == 11
    assert lines[("rules", 1, "quoted key", 1)] == 14
    assert lines[("actions", "page ops", "urls", "primary")] == 17


def test_key_lines_number_nested_arrays_of_tables_under_their_parent() -> None:
    text = ('[[tests]]\n'                 # 1
            '[[tests.series]]\n'          # 2
            'values = "1"\n'              # 3
            '[[tests.series]]\n'          # 4
            'values = "2"\n'              # 5
            '[[tests]]\n'                 # 6
            '[[tests.series]]\n'          # 7
            'values = "3"\n')             # 8
    lines = key_lines(text)
    assert lines[("tests", 0, "series", 1, "values")] == 5
    assert lines[("tests", 1, "series", 0, "values")] == 8
    assert ("tests", 1, "series", 2) not in lines
