"""`python -m agentd.holder`: the placeholder process of agentd-workloads.service.

systemd 252 puts a service's main process in the service's own cgroup at every
start, which cgroup v2 refuses once controllers are enabled for its children
(systemd#24064). So the tool calls live in a second unit, agentd-workloads.service
(Delegate=yes), that nobody restarts; this process keeps it alive. It moves itself
into a leaf (`holder`), so that agentd may enable controllers in the delegated
group, tells systemd it is ready, and then waits for SIGTERM. agentd.service can
then stop, restart or crash without touching a tool call. See docs/systemd.md.
"""

from __future__ import annotations

import os
import signal
import sys

from agentd.cgroups.detect import detect_layout, own_cgroup_v2
from agentd.sdnotify import Notifier

LEAF = "holder"


def main() -> int:
    layout = detect_layout()
    own = own_cgroup_v2()
    if layout.mode != "v2" or not layout.v2_mount or own is None:
        print("agentd.holder: needs a pure cgroup v2 hierarchy", file=sys.stderr)
        return 1
    base = f"{layout.v2_mount}/{own}"
    if own.endswith(f"/{LEAF}"):  # restarted inside the leaf already
        base = base[: -len(LEAF) - 1]
    leaf = f"{base}/{LEAF}"
    os.makedirs(leaf, exist_ok=True)
    with open(f"{leaf}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    notifier = Notifier()
    notifier.ready(f"holding {base} for agentd's tool calls")
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stop:
        signal.pause()
    notifier.stopping()
    return 0


if __name__ == "__main__":
    sys.exit(main())
