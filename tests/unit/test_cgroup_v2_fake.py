"""V2Backend against an in-memory fake cgroup2 tree that enforces the kernel's rules.

The fake implements what the backend relies on: mkdir populates interface files for
the controllers the parent enables, subtree_control only accepts controllers the group
offers and refuses when the group has processes ("no internal processes"), processes
cannot join a group that has controllers enabled for its children, rmdir refuses a
group with children or processes, and every value is one write.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from agentd.cgroups.base import UNLIMITED, CgroupError, GroupBusyError, GroupLimits
from agentd.cgroups.fs import CgroupFs, FsError
from agentd.cgroups.v2 import V2Backend
from agentd.enforcement.cpu_idle import BatchIdle
from agentd.model import Priority, Resources, Session

MOUNT = "/sys/fs/cgroup"
ALL = ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"]

_CONTROLLER_FILES = {
    "memory": {
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.max": "max\n",
        "memory.high": "max\n",
        "memory.low": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    },
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n", "cpu.idle": "0\n"},
    "pids": {"pids.current": "0\n", "pids.max": "max\n", "pids.peak": "0\n"},
}


class FakeCgroup2(CgroupFs):
    def __init__(self, offered: list[str] = ALL, enabled_at_root: list[str] = ()) -> None:
        self.files: dict[str, dict[str, str]] = {}
        self.procs: dict[str, list[int]] = {}
        self.writes: list[tuple[str, str]] = []
        self.reads: list[str] = []
        self.killed: list[int] = []
        self.files[MOUNT] = {
            "cgroup.controllers": " ".join(offered) + "\n",
            "cgroup.subtree_control": " ".join(enabled_at_root) + "\n",
            "cgroup.procs": "",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        self.procs[MOUNT] = [1]

    # -- helpers for tests -------------------------------------------------------

    def err(self, op: str, path: str, code: int) -> FsError:
        return FsError(op, path, code)

    def enabled(self, d: str) -> list[str]:
        return self.files[d]["cgroup.subtree_control"].split()

    def children_of(self, d: str) -> list[str]:
        return [p for p in self.files if os.path.dirname(p) == d]

    def populate(self, d: str) -> None:
        parent = os.path.dirname(d)
        files = self.files[d]
        for c in self.enabled(parent):
            for name, value in _CONTROLLER_FILES.get(c, {}).items():
                files.setdefault(name, value)
        files["cgroup.controllers"] = " ".join(self.enabled(parent)) + "\n"

    # -- CgroupFs ----------------------------------------------------------------

    def _split(self, op: str, path: str) -> tuple[str, str]:
        d, name = os.path.split(path)
        if d not in self.files or name not in self.files[d]:
            raise self.err(op, path, errno.ENOENT)
        return d, name

    def read_text(self, path: str) -> str:
        d, name = self._split("read", path)
        self.reads.append(path)
        if name == "cgroup.procs":
            return "".join(f"{p}\n" for p in self.procs[d])
        if name == "cgroup.events":
            populated = any(self.procs[p] for p in self.files if p == d or p.startswith(d + "/"))
            frozen = self.files[d]["cgroup.freeze"].strip()
            return f"populated {int(populated)}\nfrozen {frozen}\n"
        return self.files[d][name]

    def write_text(self, path: str, value: str) -> None:
        d, name = self._split("write", path)
        self.writes.append((path, value))
        if "\n" in value.strip():
            raise self.err("write", path, errno.EINVAL)
        if name == "cgroup.subtree_control":
            self._subtree_control(d, path, value)
        elif name == "cgroup.procs":
            pid = int(value)
            if d != MOUNT and self.enabled(d):
                raise self.err("write", path, errno.EBUSY)
            for p in self.procs.values():
                if pid in p:
                    p.remove(pid)
            self.procs[d].append(pid)
        elif name == "cgroup.kill":
            for p, pids in self.procs.items():
                if p == d or p.startswith(d + "/"):
                    self.killed.extend(pids)
                    pids.clear()
        elif name == "cpu.max":
            quota, period = value.split()
            if not (quota == "max" or int(quota) >= 1000) or int(period) < 1000:
                raise self.err("write", path, errno.EINVAL)
            self.files[d][name] = value + "\n"
        elif name == "cpu.weight":
            if not 1 <= int(value) <= 10000:
                raise self.err("write", path, errno.ERANGE)
            if self.files[d]["cpu.idle"] == "1\n":  # sched_group_set_shares: EINVAL
                raise self.err("write", path, errno.EINVAL)
            self.files[d][name] = value + "\n"
        elif name == "cpu.idle":
            if value not in ("0", "1"):
                raise self.err("write", path, errno.EINVAL)
            self.files[d][name] = value + "\n"
        elif name in ("memory.max", "memory.high", "memory.low", "pids.max"):
            if value != "max":
                int(value)
            self.files[d][name] = value + "\n"
        elif name == "cgroup.freeze":
            self.files[d][name] = value + "\n"
        else:
            raise self.err("write", path, errno.EACCES)

    def _subtree_control(self, d: str, path: str, value: str) -> None:
        offered = self.files[d]["cgroup.controllers"].split()
        have = self.enabled(d)
        for tok in value.split():
            op, c = tok[0], tok[1:]
            if op not in "+-" or c not in offered:
                raise self.err("write", path, errno.ENOENT)
            if op == "+" and d != MOUNT and self.procs[d]:
                raise self.err("write", path, errno.EBUSY)
            if op == "+" and c not in have:
                have.append(c)
            if op == "-" and c in have:
                have.remove(c)
        self.files[d]["cgroup.subtree_control"] = " ".join(have) + "\n"
        for child in self.children_of(d):
            self.populate(child)

    def mkdir(self, path: str) -> None:
        parent = os.path.dirname(path)
        if path in self.files:
            raise self.err("mkdir", path, errno.EEXIST)
        if parent not in self.files:
            raise self.err("mkdir", path, errno.ENOENT)
        self.files[path] = {
            "cgroup.procs": "",
            "cgroup.subtree_control": "\n",
            "cgroup.events": "",
            "cgroup.freeze": "0\n",
            "cgroup.kill": "",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        self.procs[path] = []
        self.populate(path)

    def rmdir(self, path: str) -> None:
        if path not in self.files:
            raise self.err("rmdir", path, errno.ENOENT)
        if self.children_of(path) or self.procs[path]:
            raise self.err("rmdir", path, errno.EBUSY)
        del self.files[path]
        del self.procs[path]

    def exists(self, path: str) -> bool:
        d, name = os.path.split(path)
        return path in self.files or name in self.files.get(d, {})

    def is_dir(self, path: str) -> bool:
        return path in self.files

    def listdir(self, path: str) -> list[str]:
        if path not in self.files:
            raise self.err("list", path, errno.ENOENT)
        return [os.path.basename(c) for c in self.children_of(path)] + list(self.files[path])

    def subdirs(self, path: str) -> list[str]:
        if path not in self.files:
            raise self.err("list", path, errno.ENOENT)
        return [os.path.basename(c) for c in self.children_of(path)]


@pytest.fixture
def fake() -> FakeCgroup2:
    return FakeCgroup2()


def backend(fake: FakeCgroup2, root: str = "agentd") -> V2Backend:
    b = V2Backend(MOUNT, root, fake)
    b.ensure_root()
    return b


def test_ensure_root_enables_controllers_on_every_ancestor(fake: FakeCgroup2) -> None:
    backend(fake, "a/b/agentd")
    for d in ("", "/a", "/a/b", "/a/b/agentd", "/a/b/agentd/sessions"):
        assert set(fake.enabled(MOUNT + d)) >= {"memory", "cpu", "pids"}, d
    # Only what we need: cpuset/io/... stay off.
    assert "io" not in fake.enabled(MOUNT)
    # Idempotent.
    V2Backend(MOUNT, "a/b/agentd", fake).ensure_root()


def test_ensure_root_reports_missing_controllers_precisely() -> None:
    fake = FakeCgroup2(offered=["cpu", "io"])
    with pytest.raises(CgroupError, match=r"offers only \[cpu\]; missing memory, pids"):
        backend(fake)


def test_create_writes_limits_in_kernel_formats(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    limits = GroupLimits(
        memory_max=64 << 20,
        memory_high=48 << 20,
        memory_low=8 << 20,
        cpu_max_cores=1.5,
        cpu_weight=250,
        pids_max=20,
    )
    b.create("sessions/s1/tc1", limits)
    files = fake.files[f"{MOUNT}/agentd/sessions/s1/tc1"]
    assert files["memory.max"] == f"{64 << 20}\n"
    assert files["memory.high"] == f"{48 << 20}\n"
    assert files["memory.low"] == f"{8 << 20}\n"
    assert files["cpu.max"] == "150000 100000\n"
    assert files["cpu.weight"] == "250\n"
    assert files["pids.max"] == "20\n"
    # Controllers enabled in the session group (the tool call's parent).
    assert set(fake.enabled(f"{MOUNT}/agentd/sessions/s1")) == {"memory", "cpu", "pids"}
    assert b.supported_limits() >= {"memory_low"}


def test_unlimited_lifts_limits_in_kernel_formats(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits(memory_max=1 << 30, cpu_max_cores=0.5, pids_max=9))
    b.set_limits(
        "sessions/s1",
        GroupLimits(
            memory_max=UNLIMITED, memory_high=UNLIMITED, cpu_max_cores=UNLIMITED, pids_max=UNLIMITED
        ),
    )
    files = fake.files[f"{MOUNT}/agentd/sessions/s1"]
    assert files["memory.max"] == "max\n"
    assert files["memory.high"] == "max\n"
    assert files["cpu.max"] == "max 100000\n"
    assert files["pids.max"] == "max\n"


def test_freeze_state_is_read_back(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    assert not b.is_frozen("sessions/s1")
    # Asked to freeze is what counts, even before every task is frozen.
    fake.files[f"{MOUNT}/agentd/sessions/s1"]["cgroup.freeze"] = "1\n"
    assert b.is_frozen("sessions/s1")
    b.thaw("sessions/s1")
    assert not b.is_frozen("sessions/s1")


def test_tiny_cpu_quota_is_clamped_to_kernel_minimum(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits(cpu_max_cores=0.001))
    assert fake.files[f"{MOUNT}/agentd/sessions/s1"]["cpu.max"] == "1000 100000\n"


def test_parent_subtree_control_read_once(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    sc = f"{MOUNT}/agentd/sessions/s1/cgroup.subtree_control"
    for i in range(5):
        b.create(f"sessions/s1/tc{i}", GroupLimits(memory_max=1 << 20))
    assert fake.reads.count(sc) == 1
    assert [w for w in fake.writes if w[0] == sc] == [(sc, "+memory +cpu +pids")]


def test_remove_forgets_cached_enablement(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    b.create("sessions/s1/tc", GroupLimits())
    b.remove("sessions/s1")
    b.create("sessions/s1", GroupLimits())
    b.create("sessions/s1/tc", GroupLimits(memory_max=1 << 20))
    assert fake.files[f"{MOUNT}/agentd/sessions/s1/tc"]["memory.max"] == f"{1 << 20}\n"


def test_create_existing_group_fails(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    with pytest.raises(CgroupError, match=r"agentd/sessions/s1 already exists"):
        b.create("sessions/s1", GroupLimits())
    assert b.exists("sessions/s1")


def test_cpu_weight_clamped_to_v2_range(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits(cpu_weight=0))
    assert fake.files[f"{MOUNT}/agentd/sessions/s1"]["cpu.weight"] == "1\n"
    b.set_limits("sessions/s1", GroupLimits(cpu_weight=50_000))
    assert fake.files[f"{MOUNT}/agentd/sessions/s1"]["cpu.weight"] == "10000\n"


def test_real_fs_errors_name_file_and_reason(tmp_path: Path) -> None:
    fs = CgroupFs()
    missing = f"{tmp_path}/nope/memory.max"
    with pytest.raises(CgroupError) as info:
        fs.write_text(missing, "1")
    assert str(info.value) == f"write {missing}: No such file or directory"
    assert isinstance(info.value, FsError) and info.value.errno == errno.ENOENT
    with pytest.raises(CgroupError, match=r"^mkdir .*: File exists$"):
        fs.mkdir(str(tmp_path))
    (tmp_path / "g" / "child").mkdir(parents=True)
    assert fs.subdirs(str(tmp_path / "g")) == ["child"]
    (tmp_path / "f").write_text("old-long-value")
    fs.write_text(str(tmp_path / "f"), "new")  # one write, no truncation (cgroupfs style)
    assert fs.read_text(str(tmp_path / "f")) == "new-long-value"


def test_failed_limit_write_removes_the_new_group(fake: FakeCgroup2) -> None:
    b = backend(fake)

    original = fake.write_text

    def failing(path: str, value: str) -> None:
        if path.endswith("pids.max"):
            raise FsError("write", path, errno.EINVAL)
        original(path, value)

    fake.write_text = failing  # type: ignore[method-assign]
    with pytest.raises(CgroupError, match=r"pids.max: Invalid argument"):
        b.create("sessions/s1", GroupLimits(memory_max=1 << 20, pids_max=10))
    assert not b.exists("sessions/s1")


def test_rejects_paths_that_escape_the_root(fake: FakeCgroup2) -> None:
    b = backend(fake)
    for bad in ("../x", "sessions/../../x", "/abs", "sessions//x", "sessions/"):
        with pytest.raises(CgroupError, match="invalid cgroup path"):
            b.create(bad, GroupLimits())


def test_usage_parsed(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    d = fake.files[f"{MOUNT}/agentd/sessions/s1"]
    d["memory.current"] = "1000\n"
    d["memory.peak"] = "5000\n"
    d["memory.events"] = "low 0\nhigh 3\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n"
    d["cpu.stat"] = (
        "usage_usec 30\nuser_usec 10\nsystem_usec 20\nnr_periods 9\n"
        "nr_throttled 4\nthrottled_usec 1234\nnr_bursts 0\nburst_usec 0\n"
    )
    d["pids.current"] = "3\n"
    d["pids.peak"] = "17\n"
    u = b.usage("sessions/s1")
    assert (u.memory_current, u.memory_peak, u.oom_kills) == (1000, 5000, 2)
    assert (u.cpu_user_usec, u.cpu_system_usec) == (10, 20)
    assert (u.cpu_throttled_usec, u.cpu_nr_throttled) == (1234, 4)
    assert (u.pids_current, u.pids_peak) == (3, 17)


def test_usage_falls_back_when_peak_files_are_absent(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    d = fake.files[f"{MOUNT}/agentd/sessions/s1"]
    del d["memory.peak"], d["pids.peak"]
    d["memory.current"] = "4096\n"
    d["pids.current"] = "2\n"
    u = b.usage("sessions/s1")
    assert (u.memory_peak, u.pids_peak) == (4096, 2)


def test_move_procs_and_no_internal_processes(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    b.create("sessions/s1/tc", GroupLimits())
    b.move("sessions/s1/tc", 4242)
    assert b.procs("sessions/s1/tc") == [4242]
    assert b.procs("sessions", recursive=True) == [4242]
    # The session group has controllers enabled for its children: it cannot hold procs.
    with pytest.raises(CgroupError, match="Device or resource busy"):
        b.move("sessions/s1", 4243)


def test_remove_deepest_first_and_busy(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    b.create("sessions/s1/a", GroupLimits())
    b.create("sessions/s1/a/deep", GroupLimits())
    b.create("sessions/s1/b", GroupLimits())
    b.move("sessions/s1/b", 99)
    with pytest.raises(GroupBusyError, match=r"s1/b: Device or resource busy"):
        b.remove("sessions/s1")
    # The empty branch went, deepest first; the busy one stays whole.
    assert not b.exists("sessions/s1/a")
    assert b.exists("sessions/s1/b")
    fake.procs[f"{MOUNT}/agentd/sessions/s1/b"].clear()
    b.remove("sessions/s1")
    assert b.children("sessions") == []
    b.remove("sessions/s1")  # missing is fine


def test_remove_order_is_deepest_first(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    b.create("sessions/s1/a", GroupLimits())
    b.create("sessions/s1/a/deep", GroupLimits())
    order: list[str] = []
    original = fake.rmdir

    def recording(path: str) -> None:
        original(path)
        order.append(path.removeprefix(f"{MOUNT}/agentd/"))

    fake.rmdir = recording  # type: ignore[method-assign]
    b.remove("sessions/s1")
    assert order == ["sessions/s1/a/deep", "sessions/s1/a", "sessions/s1"]


def test_freeze_thaw(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    b.freeze("sessions/s1")
    assert fake.files[f"{MOUNT}/agentd/sessions/s1"]["cgroup.freeze"] == "1\n"
    b.thaw("sessions/s1")
    assert fake.files[f"{MOUNT}/agentd/sessions/s1"]["cgroup.freeze"] == "0\n"


def test_kill_uses_cgroup_kill(fake: FakeCgroup2) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    b.create("sessions/s1/tc", GroupLimits())
    b.move("sessions/s1/tc", 500)
    b.move("sessions/s1/tc", 501)
    assert b.kill("sessions/s1") == 2
    assert sorted(fake.killed) == [500, 501]
    assert (f"{MOUNT}/agentd/sessions/s1/cgroup.kill", "1") in fake.writes
    b.remove("sessions/s1")


def test_kill_other_signal_freezes_signals_thaws(
    fake: FakeCgroup2, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = backend(fake)
    b.create("sessions/s1", GroupLimits())
    b.move("sessions/s1", 777)
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert b.kill("sessions/s1", signal.SIGTERM) == 1
    assert sent == [(777, signal.SIGTERM)]
    freezes = [v for p, v in fake.writes if p.endswith("cgroup.freeze")]
    assert freezes == ["1", "0"]


def test_move_self_to_leaf_makes_delegated_root_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under Delegate=yes the daemon starts inside its service cgroup; enabling
    controllers there is refused until it moves itself into a leaf."""
    fake = FakeCgroup2(enabled_at_root=["memory", "cpu", "pids"])
    svc = f"{MOUNT}/system.slice/agentd.service"
    fake.mkdir(f"{MOUNT}/system.slice")
    fake.write_text(f"{MOUNT}/system.slice/cgroup.subtree_control", "+memory +cpu +pids")
    fake.mkdir(svc)
    me = os.getpid()
    fake.write_text(f"{svc}/cgroup.procs", str(me))
    fake.write_text(f"{svc}/cgroup.procs", "31337")  # a helper child of the service

    b = V2Backend(MOUNT, "system.slice/agentd.service", fake)
    with pytest.raises(CgroupError, match="move_self_to_leaf"):
        b.ensure_root()

    leaf = b.move_self_to_leaf()
    assert leaf == f"{svc}/daemon"
    assert fake.procs[leaf] == [me, 31337]
    assert fake.procs[svc] == []
    b.ensure_root()
    assert set(fake.enabled(svc)) == {"memory", "cpu", "pids"}
    b.create("sessions/s1", GroupLimits(pids_max=5))
    assert fake.files[f"{svc}/sessions/s1"]["pids.max"] == "5\n"
    assert b.root_path() == svc
    assert b.path_of("sessions/s1") == f"{svc}/sessions/s1"


def test_batch_sessions_are_cpu_idle_while_an_interactive_one_is_open(
    fake: FakeCgroup2,
) -> None:
    b = backend(fake)
    idle = BatchIdle(b, enabled=True)
    sessions = [
        Session(id="b1", owner_uid=0, budget=Resources(), priority=Priority.BATCH, created_at=0),
        Session(id="n1", owner_uid=0, budget=Resources(), priority=Priority.NORMAL, created_at=0),
    ]
    for s in sessions:
        b.create(s.cgroup_rel, GroupLimits(cpu_weight=25))

    def idle_of(name: str) -> str:
        return fake.files[f"{MOUNT}/agentd/sessions/{name}"]["cpu.idle"]

    idle.sync(sessions)
    assert idle_of("b1") == "0\n"
    sessions.append(Session("i1", 0, Resources(), Priority.INTERACTIVE, created_at=0))
    b.create(sessions[-1].cgroup_rel, GroupLimits(cpu_weight=400))
    idle.sync(sessions)
    assert (idle_of("b1"), idle_of("n1"), idle_of("i1")) == ("1\n", "0\n", "0\n")
    # The kernel refuses a weight for an idle group; the one it had comes back after.
    with pytest.raises(CgroupError):
        b.set_limits("sessions/b1", GroupLimits(cpu_weight=25))
    writes = len(fake.writes)
    idle.sync(sessions)  # nothing changed: nothing written
    assert len(fake.writes) == writes
    idle.sync(sessions[:2])  # the interactive session closed
    assert idle_of("b1") == "0\n"
    assert fake.files[f"{MOUNT}/agentd/sessions/b1"]["cpu.weight"] == "25\n"


def test_batch_idle_off_leaves_cpu_idle_alone_and_a_failed_write_is_not_fatal(
    fake: FakeCgroup2,
) -> None:
    b = backend(fake)
    batch = Session("b1", owner_uid=0, budget=Resources(), priority=Priority.BATCH, created_at=0)
    interactive = Session("i1", 0, Resources(), Priority.INTERACTIVE, created_at=0)
    b.create(batch.cgroup_rel, GroupLimits())
    BatchIdle(b, enabled=False).sync([batch, interactive])
    assert fake.files[f"{MOUNT}/agentd/sessions/b1"]["cpu.idle"] == "0\n"
    del fake.files[f"{MOUNT}/agentd/sessions/b1"]["cpu.idle"]  # a kernel before 5.15
    BatchIdle(b, enabled=True).sync([batch, interactive])  # logs, does not raise
