"""npuagent: the host agent for AI-accelerator servers.

A plugin author imports one name from here, ``hookimpl``, and the records of
:mod:`npuagent.model` that cross the plugin boundary. The whole contract is in
:mod:`npuagent.hookspecs`.

``hookimpl`` is made on first use, not at import: inference processes import
:mod:`npuagent.client`, which is standard library only, into images that may have
none of the agent's dependencies (pluggy among them).
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        import pluggy

        #: Marks a function of a plugin module or class as an implementation of a hook
        #: of :mod:`npuagent.hookspecs`.
        marker = pluggy.HookimplMarker("npuagent")
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module 'npuagent' has no attribute {name!r}")
