"""Built-in plugins, registered explicitly by :mod:`npuagent.plugins` through the
same hooks as any installed package."""
