"""npuagent: the host agent for AI-accelerator servers.

A plugin author imports one name from here, ``hookimpl``, and the records of
:mod:`npuagent.model` that cross the plugin boundary. The whole contract is in
:mod:`npuagent.hookspecs`.
"""

import pluggy

__version__ = "0.1.0"

#: Marks a function of a plugin module or class as an implementation of a hook
#: of :mod:`npuagent.hookspecs`.
hookimpl = pluggy.HookimplMarker("npuagent")

__all__ = ["__version__", "hookimpl"]
