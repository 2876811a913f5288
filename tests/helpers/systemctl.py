#!/usr/bin/env python3
"""A stand-in systemctl for tests: units live in a JSON file, every call is logged.

STATE (env SYSTEMCTL_STATE) holds {"units": {name: {"ActiveState", "SubState", "Result", "Restart",
"NRestarts", "Environment", "fail_restart"}}, "calls": [...]}. The drop-in directory (env SYSTEMCTL_DROPINS)
is read at daemon-reload, as systemd reads it, to set Environment.
"""

import json
import os
import re
import sys

path = os.environ["SYSTEMCTL_STATE"]
with open(path) as f:
    state = json.load(f)
args = sys.argv[1:]
state["calls"].append(args)
cmd = args[0] if args else ""
units = state["units"]
code = 0
if cmd == "show":
    unit = units.get(args[1], {"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead",
                               "Result": "success"})
    for key in ("LoadState", "ActiveState", "SubState", "Result", "Restart", "NRestarts", "Environment"):
        print(f"{key}={unit.get(key, 'loaded' if key == 'LoadState' else '')}")
elif cmd == "daemon-reload":
    for name, unit in units.items():
        conf = os.path.join(os.environ.get("SYSTEMCTL_DROPINS", "/nonexistent"), f"{name}.d", "90-npuagent.conf")
        env = {}
        if os.path.exists(conf):
            with open(conf) as f:
                env = dict(re.findall(r'Environment="([^=]+)=([^"]*)"', f.read()))
        unit["Environment"] = " ".join(f"{k}={v}" for k, v in {**unit.get("base_env", {}), **env}.items())
elif cmd in ("restart", "start", "reload"):
    unit = units.setdefault(args[1], {})
    if unit.get("fail_restart"):
        unit.update(ActiveState="failed", SubState="failed", Result="exit-code")
        print(f"Job for {args[1]} failed.", file=sys.stderr)
        code = 1
    else:
        unit.update(ActiveState="active", SubState="running", Result="success",
                    NRestarts=str(int(unit.get("NRestarts", "0")) + (cmd == "restart")))
elif cmd == "stop":
    units.setdefault(args[1], {}).update(ActiveState="inactive", SubState="dead")
else:
    print(f"unknown command {cmd}", file=sys.stderr)
    code = 1
with open(path, "w") as f:
    json.dump(state, f)
sys.exit(code)
