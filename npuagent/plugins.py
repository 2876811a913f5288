"""The plugin manager: built-ins, the ``npuagent`` entry-point group, error isolation.

Built-ins are an explicit tuple of modules, registered like any plugin (as pytest,
tox and datasette do), so they load from a source checkout and a broken metadata
install cannot remove them. Installed packages are found through the entry-point
group ``npuagent``, one entry point at a time: a package that fails to import is
logged with its distribution and version, and the others load.

pluggy stops a hook call at the first implementation that raises; a daemon must
not. So the core never calls ``pm.hook.*``: every hook has a method here that
calls each implementation on its own, logs and counts a failure
(``npuagent_plugin_errors_total{plugin,hook}``), and goes on.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import pluggy

from . import __version__, hookspecs, permissions
from .model import ActionResult, ActionType, AlertTransition, CollectorType, RuleType
from .options import Option

log = logging.getLogger("npuagent.plugins")

ENTRY_POINT_GROUP = "npuagent"

#: The built-in plugins, by the name they are registered (and disabled) under.
BUILTIN_PLUGINS: Tuple[Tuple[str, str], ...] = (
    ("host", "npuagent.builtin.host"),
    ("threshold", "npuagent.builtin.threshold"),
    ("predict", "npuagent.builtin.predict"),
    ("absent", "npuagent.builtin.absent"),
    ("event", "npuagent.builtin.event"),
    ("combine", "npuagent.builtin.combine"),
    ("change", "npuagent.builtin.change"),
    ("actions", "npuagent.builtin.actions"),
    ("apps", "npuagent.builtin.apps"),
    ("scrape", "npuagent.builtin.scrape"),
    ("probe", "npuagent.builtin.probe"),
    ("notify", "npuagent.builtin.notify"),
    ("alertmanager", "npuagent.builtin.alertmanager"),
)

DISABLE_ENV = "NPUAGENT_DISABLE_PLUGINS"
#: Extra plugin modules to load, comma-separated, as ``PYTEST_PLUGINS`` does for pytest:
#: a local plugin without packaging it (and the tests' faulty plugins).
PLUGINS_ENV = "NPUAGENT_PLUGINS"


class StartupError(Exception):
    """The plugins cannot be set up (a misspelt hook name, two plugins claiming one name)."""


@dataclass
class PluginInfo:
    """What ``npuagent plugins`` shows of one plugin."""

    name: str
    dist: str
    version: str
    builtin: bool
    status: str = "loaded"  # loaded | disabled | failed
    error: str = ""
    hooks: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)


class _Manager(pluggy.PluginManager):
    """Treats every ``npuagent_*`` callable as a hook implementation, marked or not,
    so that a misspelt hook is caught by ``check_pending`` instead of being ignored."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Optional[dict]:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("npuagent_") and inspect.isroutine(getattr(plugin, name, None)):
            opts = {}
        return opts


def _module_files(obj: Any) -> List[str]:
    """The source files of the package a plugin object comes from (for the root-owned check)."""
    modname = getattr(obj, "__name__", None) if inspect.ismodule(obj) else type(obj).__module__
    if not modname:
        return []
    top = modname.split(".")[0]
    files = []
    for name, mod in list(sys.modules.items()):
        if name == top or name.startswith(top + "."):
            path = getattr(mod, "__file__", None)
            if path:
                files.append(path)
    return sorted(set(files))


class _LocalEntryPoint:
    """A module named in ``NPUAGENT_PLUGINS``, loaded like an entry point."""

    group = ENTRY_POINT_GROUP

    def __init__(self, module: str) -> None:
        self.name = self.value = module

    def load(self) -> Any:
        return importlib.import_module(self.value)


def _spec_files(reference: str) -> List[str]:
    """The files an entry point would import, found without importing it.

    For a package, its directory and every file below it: whoever can change
    any of them runs code in the agent.
    """
    import importlib.util

    top = reference.split(":", 1)[0].strip().split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        files = []
        for location in spec.submodule_search_locations:
            files.append(location)
            for root, dirs, names in os.walk(location):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                files.extend(os.path.join(root, n) for n in dirs + names)
        return files
    return [spec.origin] if spec.origin and os.path.exists(spec.origin) else []


def _entry_points() -> Iterable[Tuple[Any, str, str]]:
    """(entry point, distribution name, version) of the group, once per distribution.

    Walks distributions rather than ``entry_points()`` because Python 3.9's entry
    points do not know their distribution.
    """
    from importlib import metadata

    seen = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or "?"
        if name.lower() in seen:
            continue  # the same distribution on sys.path twice: the first one wins, as for imports
        seen.add(name.lower())
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                yield ep, name, dist.version


class Plugins:
    """The loaded plugins and one typed method per hook."""

    def __init__(self) -> None:
        self.pm = _Manager("npuagent")
        self.pm.add_hookspecs(hookspecs)
        self.infos: Dict[str, PluginInfo] = {}
        self.errors: Counter = Counter()
        self._errors_lock = threading.Lock()

    # -- loading -------------------------------------------------------------

    def load(
        self,
        disabled: Sequence[str] = (),
        entry_points: bool = True,
        builtins: Sequence[Tuple[str, str]] = BUILTIN_PLUGINS,
        strict: Optional[bool] = None,
    ) -> None:
        """Register the built-ins and (unless ``entry_points`` is false) the
        installed plugins, except those named in ``disabled`` or in the
        ``NPUAGENT_DISABLE_PLUGINS`` environment variable (comma-separated).

        :param strict: refuse, before importing it, a plugin whose files a
            non-root user can change; defaults to "running as root".
        :raises StartupError: a plugin implements a hook that does not exist.
        """
        strict = permissions.running_as_root() if strict is None else strict
        blocked = set(disabled) | {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        for name, modname in builtins:
            if name in blocked:
                self.infos[name] = PluginInfo(name, "npuagent", __version__, True, "disabled")
                continue
            self.register(importlib.import_module(modname), name, "npuagent", __version__, builtin=True)
        extra = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
        if entry_points:
            for ep, dist, version in [*_entry_points(), *((_LocalEntryPoint(m), PLUGINS_ENV, "-") for m in extra)]:
                if ep.name in blocked:
                    self.infos[ep.name] = PluginInfo(ep.name, dist, version, False, "disabled")
                    continue
                refused = permissions.check_files(_spec_files(ep.value), "plugin code") if strict else []
                if refused:
                    for message in refused:
                        log.error("plugin %s from %s %s: %s", ep.name, dist, version, message)
                    self.infos[ep.name] = PluginInfo(ep.name, dist, version, False, "failed", "; ".join(refused))
                    continue
                try:
                    obj = ep.load()
                except Exception as e:
                    log.exception("plugin %s from %s %s cannot be loaded; going on without it", ep.name, dist,
                                  version)
                    self.infos[ep.name] = PluginInfo(ep.name, dist, version, False, "failed",
                                                     f"{type(e).__name__}: {e}")
                    continue
                self.register(obj, ep.name, dist, version)
        self.check()

    def register(self, obj: Any, name: str, dist: str = "", version: str = "", builtin: bool = False) -> None:
        """Register one plugin object (a module, or an instance with hook methods)."""
        if name in self.infos and self.infos[name].status == "loaded":
            raise StartupError(f"plugin {name!r} from {dist or '?'} clashes with an already loaded "
                               f"plugin of that name from {self.infos[name].dist}")
        self.pm.register(obj, name=name)
        hooks = sorted(impl_name for impl_name in dir(obj) if self.pm.parse_hookimpl_opts(obj, impl_name) is not None)
        self.infos[name] = PluginInfo(name, dist, version, builtin, "loaded", hooks=hooks, files=_module_files(obj))

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.infos.pop(name, None)

    def check(self) -> None:
        """Turn hook implementations without a spec into a start-up error naming the plugin."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            plugin = getattr(e, "plugin", None)
            name = self.pm.get_name(plugin) if plugin is not None else "?"
            known = [n for n in dir(hookspecs) if n.startswith("npuagent_")]
            from .options import close_matches

            bad = [h for h in self.infos.get(name, PluginInfo(name, "", "", False)).hooks if h not in known]
            hints = "; ".join(f"{h}{close_matches(h, known)}" for h in bad) or str(e)
            raise StartupError(f"plugin {name!r} implements unknown hook(s): {hints}") from None

    def loaded(self) -> List[PluginInfo]:
        return [i for i in self.infos.values() if i.status == "loaded"]

    # -- calling -------------------------------------------------------------

    def _call(self, hook: str, **kwargs: Any) -> List[Tuple[str, Any]]:
        """Call every implementation of ``hook`` on its own, in pluggy's order (last registered first,
        ``tryfirst``/``trylast`` honoured)."""
        results = []
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception:
                self.record_error(impl.plugin_name, hook)
                log.exception("plugin %s raised in %s; the other plugins go on", impl.plugin_name, hook)
                continue
            results.append((impl.plugin_name, result))
        return results

    def record_error(self, plugin: str, hook: str) -> None:
        with self._errors_lock:
            self.errors[(plugin, hook)] += 1

    def _registered(self, hook: str, kind: type) -> Dict[str, Tuple[str, Any]]:
        """Collect the named types a registration hook returns: name -> (plugin, type)."""
        found: Dict[str, Tuple[str, Any]] = {}
        # pluggy calls the last registered first; for a name claimed twice the first registered wins
        for plugin, result in reversed(self._call(hook)):
            for item in result or ():
                if not isinstance(item, kind):
                    self.record_error(plugin, hook)
                    log.error("plugin %s: %s returned %r, not a %s; ignored", plugin, hook, item, kind.__name__)
                    continue
                if item.name in found:
                    self.record_error(plugin, hook)
                    log.error("plugin %s: %s %r is already registered by plugin %s; ignored", plugin,
                              kind.__name__, item.name, found[item.name][0])
                    continue
                found[item.name] = (plugin, item)
        return found

    def collector_types(self) -> Dict[str, Tuple[str, CollectorType]]:
        return self._registered("npuagent_collector_types", CollectorType)

    def rule_types(self) -> Dict[str, Tuple[str, RuleType]]:
        return self._registered("npuagent_rule_types", RuleType)

    def action_types(self) -> Dict[str, Tuple[str, ActionType]]:
        return self._registered("npuagent_action_types", ActionType)

    def config_options(self) -> Dict[str, List[Option]]:
        """plugin name -> the keys of its ``[plugins.<name>]`` table."""
        out: Dict[str, List[Option]] = {}
        for plugin, result in self._call("npuagent_config_options"):
            good = [o for o in result or () if isinstance(o, Option)]
            if len(good) != len(result or ()):
                self.record_error(plugin, "npuagent_config_options")
                log.error("plugin %s: npuagent_config_options returned something that is not an Option", plugin)
            out[plugin] = good
        return out

    def startup(self, agent: Any) -> None:
        self._call("npuagent_startup", agent=agent)

    def shutdown(self, agent: Any) -> None:
        self._call("npuagent_shutdown", agent=agent)

    def alert_transition(self, transition: AlertTransition) -> None:
        self._call("npuagent_alert_transition", transition=transition)

    def action_result(self, result: ActionResult) -> None:
        self._call("npuagent_action_result", result=result)
