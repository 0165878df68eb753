"""Where a load run's slow calls come from: spread out (queueing) or in bursts (a stall
of the server, or of the host), and on which connections.

api_load's native client records, per call, its latency, when it was sent (or due,
in an open loop) and its connection. The readers take connections in turn, so the
calls of one reader process are those of some connections: slow calls gathered on a
few connections point at one reader. Bursts are slow calls sent within GAP_MS of
each other; a regular spacing between bursts points at something periodic (for
api_load, the session churn that feeds the watchers: docs/node-api.md).
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

GAP_MS = 5.0  # slow calls sent closer than this belong to one burst


@dataclass
class SlowCalls:
    bound_ms: float
    calls: int
    slow: int  # calls over bound_ms
    bursts: int
    median_gap_ms: float  # between the starts of consecutive bursts; 0 with < 2 bursts
    # The fewest connections holding at least 80% of the slow calls, and that share.
    connections: list[int]
    share_on_them: float
    of_connections: int

    def summary(self) -> str:
        if not self.slow:
            return f"none over {self.bound_ms:g} ms"
        text = (
            f"{100 * self.slow / self.calls:.1f}% over {self.bound_ms:g} ms "
            f"({self.slow} of {self.calls}) in {self.bursts} bursts"
        )
        if self.bursts > 1:
            text += f", median {self.median_gap_ms:.0f} ms apart"
        return text + (
            f"; {100 * self.share_on_them:.0f}% on connection(s) "
            f"{','.join(map(str, self.connections))} of {self.of_connections}"
        )


def analyse(
    latencies: list[float], sent_ms: list[float], connections: list[int], bound_ms: float
) -> SlowCalls:
    calls = zip(latencies, sent_ms, connections, strict=True)
    slow = sorted((sent, conn) for latency, sent, conn in calls if latency > bound_ms)
    starts: list[float] = []
    last = float("-inf")
    for sent, _ in slow:
        if sent - last >= GAP_MS:
            starts.append(sent)
        last = sent
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    per_connection: dict[int, int] = {}
    for _, conn in slow:
        per_connection[conn] = per_connection.get(conn, 0) + 1
    chosen: list[int] = []
    held = 0
    for conn, count in sorted(per_connection.items(), key=lambda item: -item[1]):
        if slow and held >= 0.8 * len(slow):
            break
        chosen.append(conn)
        held += count
    return SlowCalls(
        bound_ms=bound_ms,
        calls=len(latencies),
        slow=len(slow),
        bursts=len(starts),
        median_gap_ms=statistics.median(gaps) if gaps else 0.0,
        connections=sorted(chosen),
        share_on_them=held / len(slow) if slow else 0.0,
        of_connections=len(set(connections)),
    )
