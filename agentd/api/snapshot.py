"""The node state the reader processes answer from (readers.py, reader.py).

The daemon publishes, into a file of a root-only directory, everything NodeService's
read calls need: the node-wide GetNodeState answer (with tool calls), the room left
and stall percent that ScorePlacement scores against, the capacity, and the
predictor's node window. A reader stats the file on each call and reloads it when it
was replaced (written whole, then renamed: a reader never sees half a snapshot).

When it is published: after every successful control or admission call, before that
call answers (NodeService.after_change); at once when a session opens or closes or a
reservation changes (admitted, used by a session, released, expired): what the room
left depends on; and every `interval` seconds otherwise. So a reader's answer is at
most `interval` (0.1 s) plus one build (~1-3 ms) behind the daemon for everything
else: tool calls started and ended, usage, pressure, the pressure policy's throttles.

Read-your-writes across processes: every such change first bumps a generation
number in a shared 8-byte file (ChangeCounter: no lock, no system call), and each
snapshot carries the generation it was built after. A reader whose snapshot is
older than the counter waits for the next one (reader.py: at most FRESH_WAIT_SECONDS,
then it passes the call to the daemon). So once CreateSession, Admit or Evict has
answered, no reader answers with the state from before it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agentd.events import Event, EventBus
from agentd.scoring import Capacity, Room
from agentd.v1 import node_pb2 as pb

log = structlog.get_logger("agentd.api.snapshot")

#: Usage and pressure in a snapshot are at most this old (GetNodeState on the daemon
#: samples anew past 0.2 s).
PUBLISH_INTERVAL_SECONDS = 0.1
#: After a failed build, the first retry waits this long (doubling up to the interval).
RETRY_SECONDS = 0.001
#: Events after which readers wait for a new snapshot (read-your-writes), because
#: the room left changed. Admission and control calls publish synchronously, and
#: reservation changes through `changed`.
ROOM_EVENTS = frozenset({"session_opened", "session_closed"})


_COUNTER = struct.Struct("<Q")


class ChangeCounter:
    """A generation number in a shared file: the daemon bumps it, readers read it."""

    def __init__(self, path: Path, writer: bool) -> None:
        flags = os.O_RDWR | os.O_CREAT if writer else os.O_RDONLY
        fd = os.open(path, flags, 0o600)
        try:
            if writer:
                os.ftruncate(fd, _COUNTER.size)
            access = mmap.ACCESS_WRITE if writer else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, _COUNTER.size, access=access)
        finally:
            os.close(fd)
        self._lock = threading.Lock()

    def value(self) -> int:
        return _COUNTER.unpack_from(self._map)[0]

    def bump(self) -> None:
        with self._lock:  # one writing process; its threads in turn
            _COUNTER.pack_into(self._map, 0, self.value() + 1)


@dataclass(frozen=True)
class NodeSnapshot:
    state: bytes  # a serialized GetNodeStateResponse (node-wide, with tool calls)
    room: Room
    stall_percent: float
    capacity: Capacity
    window: dict[str, float] = field(default_factory=dict)  # NodeWindow.as_dict()
    published_at: float = 0.0  # time.time()
    generation: int = 0  # the ChangeCounter's value before it was built
    # The daemon's health statuses by service name (reader_health.py answers from them).
    health: dict[str, int] = field(default_factory=dict)


class SnapshotPublisher:
    """Daemon side: builds a NodeSnapshot with `build` and writes it to `path`."""

    def __init__(
        self,
        path: Path,
        counter: ChangeCounter,
        build: Callable[[int], NodeSnapshot],
        bus: EventBus,
        interval: float = PUBLISH_INTERVAL_SECONDS,
    ) -> None:
        """`build(generation)`: the snapshot as of now."""
        self.path = path
        self.counter = counter
        self.build = build
        self.interval = interval
        self._write_lock = threading.Lock()
        self._local = threading.local()  # before_reply() on this thread
        self._held_lock = threading.Lock()
        self._held: dict[int, int] = {}  # thread -> its first event not yet published
        self._dirty = threading.Event()
        self._stop = threading.Event()
        # The filter is the hook: any event (a session opened or closed, a tool call,
        # a throttle) republishes at once; the subscription keeps nothing.
        self._subscription = bus.subscribe(self._on_event, maxsize=1)
        self._thread = threading.Thread(target=self._run, name="agentd-snapshot", daemon=True)

    def _on_event(self, event: Event) -> bool:
        # Only what changes the room readers score against (a session's budget comes
        # or goes) must be in the next read: CreateSession's caller must see it in the
        # next score on any connection. Everything else (tool calls, processes,
        # throttling by the policy, pressure) is in the next periodic snapshot, at
        # most `interval` later: per event, a busy node (every fork of a tool call is
        # an event) would rebuild the snapshot hundreds of times a second.
        if event.kind not in ROOM_EVENTS:
            return False
        if getattr(self._local, "replying", False):
            # Inside before_reply(): published before the reply; until then the event
            # is held from the readers' tails. Runs under the bus's lock, so no tail
            # reads the event before it is held.
            with self._held_lock:
                self._held.setdefault(threading.get_ident(), event.seq)
        else:
            self.changed()
        return False

    @contextlib.contextmanager
    def before_reply(self) -> Iterator[None]:
        """Around an RPC's work (AgentService's): a change of the room made inside is
        published here, before the reply, instead of making every reader's calls wait
        for the publisher thread (the slowest 1% of ScorePlacement at load: waits of
        5-12 ms at the median, docs/node-api.md). Its events reach the readers only
        once that snapshot is out (`visible_seq`), so a watcher that saw one never
        reads a state without it. If the build fails, readers wait as before."""
        if getattr(self._local, "replying", False):  # nested: the outer one publishes
            yield
            return
        self._local.replying = True
        try:
            yield
        finally:
            self._local.replying = False
            self._publish_held()

    def _publish_held(self) -> None:
        me = threading.get_ident()
        with self._held_lock:
            if me not in self._held:
                return
        try:
            self.publish()
        except Exception:
            log.exception("snapshot.publish_failed", before_reply=True)
            self.changed()  # the readers wait for the publisher thread's, as before
        finally:
            with self._held_lock:
                self._held.pop(me, None)

    def visible_seq(self, last: int) -> int:
        """The last event the readers' tails may send: `last`, or the one before the
        first event whose snapshot is not out yet."""
        with self._held_lock:
            first_held = min(self._held.values(), default=last + 1)
        return min(last, first_held - 1)

    def changed(self) -> None:
        """Something readers show changed: from now on they wait for a newer
        snapshot, which is built at once. Cheap, takes no daemon lock: called from
        the event bus's publish and the reservation table."""
        self.counter.bump()
        self._dirty.set()

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def publish(self) -> None:
        """Build and write a snapshot now (the caller's change is in it when this
        returns)."""
        with self._write_lock:
            snapshot = self.build(self.counter.value())  # read first: never newer
            partial = self.path.with_name(self.path.name + ".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(partial, self.path)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._dirty.wait(self.interval)
            self._dirty.clear()
            if self._stop.is_set():
                return
            try:
                self.publish()
                failures = 0
            except Exception:  # keep publishing: readers serve the last one meanwhile
                failures += 1
                log.exception("snapshot.publish_failed", failures=failures)
                # Readers wait (up to reader.FRESH_WAIT_SECONDS) for the snapshot of
                # a change: try again at once. The usual failure was a race with that
                # change itself (a session closed between the list of sessions and
                # the read of its tool calls: now shown without them, node_service.py
                # _session_view); sleeping the whole interval after it
                # made every such wait time out, the p99 of ScorePlacement through
                # the readers (~100 ms). Only a build that keeps failing backs off.
                self._dirty.set()
                time.sleep(min(RETRY_SECONDS * 2 ** (failures - 1), self.interval))

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._subscription.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class SnapshotFile:
    """Reader side: the latest snapshot at `path`, reloaded when the file is replaced
    (one stat a call: ~2 us)."""

    def __init__(self, path: Path, counter: ChangeCounter) -> None:
        self.path = path
        self.counter = counter
        self._inode: tuple[int, int] | None = None
        self._snapshot: NodeSnapshot | None = None
        self._states: dict[bool, pb.GetNodeStateResponse] = {}

    def current(self) -> NodeSnapshot:
        """Raises FileNotFoundError before the daemon's first publication."""
        st = os.stat(self.path)
        inode = (st.st_ino, st.st_mtime_ns)
        if inode != self._inode or self._snapshot is None:
            with open(self.path, "rb") as f:
                # Written by the daemon (root) into a 0700 root directory.
                snapshot = pickle.loads(f.read())
            self._snapshot, self._inode, self._states = snapshot, inode, {}
        return self._snapshot

    def stale(self) -> bool:
        """The daemon changed something since the current snapshot was built."""
        return self.current().generation < self.counter.value()

    def state(self, with_tool_calls: bool) -> pb.GetNodeStateResponse:
        """The snapshot's GetNodeState answer (its sessions' running tool calls only
        when asked for, as on the daemon), built once per snapshot: never change it."""
        snapshot = self.current()
        if with_tool_calls not in self._states:
            state = pb.GetNodeStateResponse.FromString(snapshot.state)
            if not with_tool_calls:
                for view in state.state.sessions:
                    del view.tool_calls[:]
            self._states[with_tool_calls] = state
        return self._states[with_tool_calls]


#: Where snapshots are written: tmpfs. On the state directory's ext4 a replace-by-
#: rename costs ~1.7 ms here (the rename forces the new file's blocks out,
#: auto_da_alloc), ~35 us on tmpfs; at tens of publications a second that was a few
#: percent of a core and disk writes for data nobody keeps.
SHARED_MEMORY = Path("/dev/shm")
_DIRECTORY_PREFIX = "agentd-snapshot-"


def snapshot_directory(fallback: Path) -> Path:
    """A new root-only directory for this daemon's snapshots on tmpfs (`fallback`
    without one), after removing those of daemons no longer running (a SIGKILLed
    daemon leaves its own: its pid is in the name)."""
    if not SHARED_MEMORY.is_dir():
        return fallback
    for old in SHARED_MEMORY.glob(f"{_DIRECTORY_PREFIX}*"):
        pid = old.name[len(_DIRECTORY_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_directory(old)
    # mkdtemp: a fresh name, created 0700 by this (root) process: nobody else can
    # have made it or write into it.
    return Path(tempfile.mkdtemp(prefix=f"{_DIRECTORY_PREFIX}{os.getpid()}-", dir=SHARED_MEMORY))


def remove_directory(path: Path) -> None:
    if path.parent == SHARED_MEMORY:
        shutil.rmtree(path, ignore_errors=True)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
