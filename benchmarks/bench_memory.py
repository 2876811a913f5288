"""The agent's steady PSS on its default configuration, against a bare Python interpreter and, when
installed, node_exporter (target <= 30 MiB, 1.5x node_exporter's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

import _util
from _util import free_port, pss_bytes, report

STEADY = 15.0
MIB = 1024 * 1024


def steady_pss(argv: list, env: Optional[dict] = None) -> int:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(STEADY)
        assert proc.poll() is None, f"{argv[0]} exited with {proc.returncode}"
        return pss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "npuagent.toml")
    with open(os.path.join(_util.ROOT, "etc", "npuagent.toml")) as f:
        text = f.read().replace('listen = "127.0.0.1:9740"', f'listen = "127.0.0.1:{free_port()}"')
    with open(cfg, "w") as f:
        f.write(text)
    os.makedirs(os.path.join(d, "conf.d"))
    with open(os.path.join(d, "conf.d", "state.toml"), "w") as f:
        f.write(f'[agent]\nstate_dir = "{d}/state"\n')
    env = {**os.environ, "PYTHONPATH": _util.ROOT}
    ours = steady_pss([sys.executable, "-m", "npuagent", "run", "-c", cfg], env)
    bare = steady_pss([sys.executable, "-c", "import time; time.sleep(600)"])
    rows = [{"what": "npuagent run, default configuration", "pss_mib": f"{ours / MIB:.1f}",
             "ratio": f"{ours / bare:.2f}x", "note": "target <= 30 MiB"},
            {"what": "baseline: bare python3 interpreter", "pss_mib": f"{bare / MIB:.1f}", "ratio": "1.00x",
             "note": ""}]
    if shutil.which("prometheus-node-exporter"):
        ne = steady_pss(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{free_port()}"])
        rows.append({"what": "baseline: node_exporter", "pss_mib": f"{ne / MIB:.1f}", "ratio": f"{ne / bare:.2f}x",
                     "note": f"npuagent/node_exporter = {ours / ne:.2f}x"})
    report("Steady PSS", rows)


if __name__ == "__main__":
    main()
