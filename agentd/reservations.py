"""Reservations: resources promised to a session that is about to arrive.

A scheduler Admits a candidate; the resources count against the node (see
scoring.py) until the session that uses them is created (CreateSession with the
reservation's id), the scheduler releases them, or they expire. The check and the
insert happen under one lock, so two concurrent Admits cannot both take the last
room. Reservations live in memory only: after a daemon restart a scheduler's
reservation is gone and its CreateSession fails with NOT_FOUND, which it must
handle anyway for expiry.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentd.model import Resources

#: Bounds every caller's reservations together: the table cannot grow without limit.
MAX_RESERVATIONS = 4096


@dataclass(frozen=True)
class Reservation:
    id: str
    candidate_id: str
    resources: Resources
    expires_at: float  # time.time()
    owner: str  # the principal that made it, for the audit log and Release


class Reservations:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, Reservation] = {}
        # Told after every change (the reader processes' snapshot, snapshot.py).
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def admit(
        self,
        candidate_id: str,
        resources: Resources,
        ttl: float,
        owner: str,
        refusal: Callable[[list[Reservation]], str],
    ) -> tuple[Reservation | None, str]:
        """Reserve unless `refusal(live reservations)` gives a reason not to."""
        with self._lock:
            self._expire_locked(self.clock())
            if len(self._live) >= MAX_RESERVATIONS:
                return None, f"{MAX_RESERVATIONS} reservations are live (the limit)"
            reason = refusal(list(self._live.values()))
            if reason:
                return None, reason
            reservation = Reservation(
                id=f"r-{secrets.token_hex(8)}",
                candidate_id=candidate_id,
                resources=resources,
                expires_at=self.clock() + ttl,
                owner=owner,
            )
            self._live[reservation.id] = reservation
        self._changed()
        return reservation, ""

    def get(self, reservation_id: str) -> Reservation | None:
        with self._lock:
            found = self._live.get(reservation_id)
            return found if found and found.expires_at > self.clock() else None

    def take(self, reservation_id: str) -> Reservation | None:
        """Remove and return a live reservation (release, or used by a session)."""
        with self._lock:
            found = self._live.pop(reservation_id, None)
        if found is not None:
            self._changed()
        return found if found and found.expires_at > self.clock() else None

    def live(self) -> list[Reservation]:
        now = self.clock()
        with self._lock:
            return [r for r in self._live.values() if r.expires_at > now]

    def expire(self) -> list[Reservation]:
        """Drop expired reservations (housekeeping); returns them."""
        with self._lock:
            gone = self._expire_locked(self.clock())
        if gone:
            self._changed()
        return gone

    def _expire_locked(self, now: float) -> list[Reservation]:
        gone = [r for r in self._live.values() if r.expires_at <= now]
        for r in gone:
            del self._live[r.id]
        return gone
