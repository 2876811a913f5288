"""The plugin contract: every hook exercised, error isolation, entry points, unknown hooks, disabling."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, List

import pytest

from npuagent import cli, hookimpl, hookspecs
from npuagent.model import ActionResult, ActionType, AlertTransition, CollectorType, RuleType
from npuagent.options import Boolean, Option
from npuagent.plugins import Plugins, StartupError

from .conftest import make_plugins

HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("npuagent_"))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    """A new hook must come with a test of its own (datasette's habit)."""
    assert f"test_hook_{hook}" in globals(), f"add test_hook_{hook} to {__name__}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    doc = getattr(hookspecs, hook).__doc__ or ""
    assert "Called" in doc and ".. versionadded::" in doc
    assert hook in (importlib.import_module("npuagent_example").__doc__ or ""), "the plugin guide must name it"


class Recorder:
    """Implements every hook and records the calls."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    @hookimpl
    def npuagent_collector_types(self) -> list:
        return [CollectorType("rec", lambda ctx: None, enabled_by_default=False)]

    @hookimpl
    def npuagent_rule_types(self) -> list:
        return [RuleType("rec-rule", lambda ctx: None)]

    @hookimpl
    def npuagent_action_types(self) -> list:
        return [ActionType("rec-action", lambda ctx: None)]

    @hookimpl
    def npuagent_config_options(self) -> list:
        return [Option("loud", Boolean(), False, "Be loud.")]

    @hookimpl
    def npuagent_startup(self, agent: Any) -> None:
        self.calls.append(("startup", agent))

    @hookimpl
    def npuagent_shutdown(self, agent: Any) -> None:
        self.calls.append(("shutdown", agent))

    @hookimpl
    def npuagent_alert_transition(self, transition: AlertTransition) -> None:
        self.calls.append(("transition", transition))

    @hookimpl
    def npuagent_action_result(self, result: ActionResult) -> None:
        self.calls.append(("result", result))


class Raiser:
    """Raises in every hook."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


for _hook in HOOKS:
    def _raise(*args: Any, _hook: str = _hook, **kwargs: Any) -> Any:
        raise RuntimeError(f"boom in {_hook}")
    _raise.__name__ = _hook
    setattr(Raiser, _hook, hookimpl(_raise))


@pytest.fixture
def pair() -> tuple:
    """A raising plugin registered before and a recording one after: order must not matter."""
    rec = Recorder()
    plugins = make_plugins(Raiser(), rec)
    return plugins, rec


def test_hook_npuagent_collector_types(pair: tuple) -> None:
    plugins, _rec = pair
    assert list(plugins.collector_types()) == ["rec"]
    assert plugins.collector_types()["rec"][0] == "test1"
    assert plugins.errors[("test0", "npuagent_collector_types")] == 2


def test_hook_npuagent_rule_types(pair: tuple) -> None:
    plugins, _rec = pair
    assert list(plugins.rule_types()) == ["rec-rule"]
    assert plugins.errors[("test0", "npuagent_rule_types")] == 1


def test_hook_npuagent_action_types(pair: tuple) -> None:
    plugins, _rec = pair
    assert list(plugins.action_types()) == ["rec-action"]
    assert plugins.errors[("test0", "npuagent_action_types")] == 1


def test_hook_npuagent_config_options(pair: tuple, tmp_path: Any) -> None:
    from npuagent import config

    plugins, _rec = pair
    assert [o.name for o in plugins.config_options()["test1"]] == ["loud"]
    (tmp_path / "a.toml").write_text("[plugins.test1]\nloud = true\n")
    cfg = config.build(config.read_sources(str(tmp_path / "a.toml"), strict=False), plugins)
    assert cfg.plugin_options["test1"]["loud"] is True
    (tmp_path / "a.toml").write_text('[plugins.test1]\nloud = "very"\n')
    with pytest.raises(config.ConfigError) as e:
        config.build(config.read_sources(str(tmp_path / "a.toml"), strict=False), plugins)
    assert "a.toml:2: plugins.test1.loud: expected true or false, got 'very'" in str(e.value)


def test_hook_npuagent_startup(pair: tuple) -> None:
    plugins, rec = pair
    plugins.startup("the agent")
    assert rec.calls == [("startup", "the agent")]
    assert plugins.errors[("test0", "npuagent_startup")] == 1


def test_hook_npuagent_shutdown(pair: tuple) -> None:
    plugins, rec = pair
    plugins.shutdown("the agent")
    assert rec.calls == [("shutdown", "the agent")]
    assert plugins.errors[("test0", "npuagent_shutdown")] == 1


def test_hook_npuagent_alert_transition(pair: tuple) -> None:
    plugins, rec = pair
    t = AlertTransition("npu-hot", {"device_id": "0"}, "pending", "firing", at=1.0, value=91.0)
    plugins.alert_transition(t)
    assert rec.calls == [("transition", t)]
    assert plugins.errors[("test0", "npuagent_alert_transition")] == 1


def test_hook_npuagent_action_result(pair: tuple) -> None:
    plugins, rec = pair
    r = ActionResult("throttle", "success", "halved")
    plugins.action_result(r)
    assert rec.calls == [("result", r)] and r.ok
    assert plugins.errors[("test0", "npuagent_action_result")] == 1


def test_raising_plugin_is_logged_with_its_name(pair: tuple, caplog: pytest.LogCaptureFixture) -> None:
    plugins, _rec = pair
    with caplog.at_level(logging.ERROR, logger="npuagent.plugins"):
        plugins.startup(None)
    assert "plugin test0 raised in npuagent_startup; the other plugins go on" in caplog.text
    assert "boom in npuagent_startup" in caplog.text


def test_wrong_return_values_and_duplicate_names_are_counted_not_fatal() -> None:
    class Bad:
        @hookimpl
        def npuagent_collector_types(self) -> list:
            return ["not a type", CollectorType("rec", lambda ctx: None)]

    plugins = make_plugins(Recorder(), Bad())
    assert list(plugins.collector_types()) == ["rec"]
    assert plugins.collector_types()["rec"][0] == "test0"  # the first registration keeps the name
    assert plugins.errors[("test1", "npuagent_collector_types")] == 4


def test_an_unknown_hook_name_is_a_startup_error_naming_the_plugin() -> None:
    class Typo:
        @hookimpl
        def npuagent_colector_types(self) -> list:
            return []

    class Unmarked:
        def npuagent_startpu(self, agent: Any) -> None:
            pass

    for obj, hint in ((Typo(), 'npuagent_colector_types (did you mean "npuagent_collector_types"?)'),
                      (Unmarked(), 'npuagent_startpu (did you mean "npuagent_startup"?)')):
        plugins = Plugins()
        plugins.load(entry_points=False, builtins=())
        plugins.register(obj, "typo")
        with pytest.raises(StartupError) as e:
            plugins.check()
        assert str(e.value) == f"plugin 'typo' implements unknown hook(s): {hint}"


def _fake_distribution(where: Any, name: str, version: str, entry_points: str, module: str = "") -> None:
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module:
        (where / f"{module}.py").write_text("from npuagent import hookimpl\n\n@hookimpl\ndef npuagent_startup(agent):\n"
                                            "    pass\n")


def test_a_package_whose_entry_point_cannot_be_imported_is_logged_and_the_rest_load(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _fake_distribution(tmp_path, "npuagent-broken", "1.2.3", "[npuagent]\nbroken = npuagent_no_such_module_xyz\n")
    _fake_distribution(tmp_path, "npuagent-fine", "0.9", "[npuagent]\nfine = npuagent_fine_mod\n",
                       module="npuagent_fine_mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins()
    with caplog.at_level(logging.ERROR, logger="npuagent.plugins"):
        plugins.load(strict=False)
    broken = plugins.infos["broken"]
    assert (broken.status, broken.dist, broken.version) == ("failed", "npuagent-broken", "1.2.3")
    assert "ModuleNotFoundError" in broken.error
    assert "plugin broken from npuagent-broken 1.2.3 cannot be loaded; going on without it" in caplog.text
    fine = plugins.infos["fine"]
    assert (fine.status, fine.dist, fine.version, fine.hooks) == ("loaded", "npuagent-fine", "0.9",
                                                                  ["npuagent_startup"])
    assert plugins.infos["host"].status == "loaded"
    assert plugins.infos["example"].status == "loaded"  # the installed example package


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root agent refuses plugin files")
def test_root_refuses_plugin_code_others_can_write_before_importing_it(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    os.chmod(tmp_path, 0o755)
    _fake_distribution(site, "npuagent-lax", "1.0", "[npuagent]\nlax = npuagent_lax_mod\n", module="npuagent_lax_mod")
    os.chmod(site / "npuagent_lax_mod.py", 0o666)
    monkeypatch.syspath_prepend(str(site))
    plugins = Plugins()
    plugins.load(strict=True)
    lax = plugins.infos["lax"]
    assert lax.status == "failed"
    assert "npuagent_lax_mod.py: refusing plugin code that a non-root user can change: it is writable by every" \
           in lax.error
    assert "npuagent_lax_mod" not in sys.modules  # refused before any of its code ran


def test_plugins_can_be_disabled_by_configuration_and_environment(tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "npuagent.toml").write_text('[plugins]\ndisabled = ["example"]\n')
    plugins, cfg = cli.load(str(tmp_path / "npuagent.toml"), strict=False)
    assert plugins.infos["example"].status == "disabled"
    assert "example-files" not in plugins.collector_types()
    assert cfg.disabled_plugins == ("example",)
    monkeypatch.setenv("NPUAGENT_DISABLE_PLUGINS", "host, example, ascend")
    plugins = Plugins()
    plugins.load(strict=False)
    assert {plugins.infos[p].status for p in ("host", "example", "ascend")} == {"disabled"}
    assert not {"host", "example-files", "npu"} & set(plugins.collector_types())


def test_plugins_command_lists_distribution_version_and_hooks(capsys: pytest.CaptureFixture, tmp_path: Any) -> None:
    (tmp_path / "npuagent.toml").write_text("")
    assert cli.main(["plugins", "-c", str(tmp_path / "npuagent.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS", "PROVIDES"]
    host = next(line.split() for line in out if line.startswith("host "))
    assert host[1:4] == ["npuagent", importlib.import_module("npuagent").__version__, "loaded"]
    assert "collector:host" in host[5]
    example = next(line.split() for line in out if line.startswith("example "))
    assert example[1:4] == ["npuagent-example", "0.1.0", "loaded"]
    assert "collector_types" in example[4] and "action:example-append" in example[5]
