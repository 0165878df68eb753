"""The daemon's configuration: a TOML file, then the environment, then flags.

Everything is read and validated once, in `load_config`, before the daemon
touches anything: a wrong value stops the start with a message that names where
it came from (file and table, variable or flag), the key and the reason. Unknown
tables and keys are errors, because a typo silently ignored is a setting the
operator believes is in force and is not.

Every layer's values are validated, not only the winning one, so that a bad line
in the file cannot hide behind a flag and surface on the next restart.
"""

from __future__ import annotations

import argparse
import difflib
import grp
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.observability.address import split_listen
from agentd.units import UnitError, parse_cpu, parse_size

DEFAULT_CONFIG_PATH = Path("/etc/agentd/agentd.toml")

BACKENDS = ("auto", "v1", "v2")
TRACKING_SOURCES = ("auto", "ebpf", "netlink", "procfs", "off")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The kernel's PID_MAX_LIMIT: pids.max cannot usefully exceed it.
PID_MAX_LIMIT = 4 * 1024 * 1024


class ConfigError(Exception):
    """An invalid configuration; the message is meant for the operator as is."""


@dataclass(frozen=True)
class DaemonConfig:
    socket: Path
    socket_mode: int  # permission bits, e.g. 0o660
    socket_gid: int  # resolved from `socket_group` at load time
    state_dir: Path
    log_format: str  # auto | json | console
    log_level: str  # debug | info | warning | error | critical


@dataclass(frozen=True)
class CgroupConfig:
    backend: str  # auto | v1 | v2
    root: str  # name of agentd's top group
    delegated: str  # a v2 cgroup systemd delegated to agentd ("" = none); see docs/systemd.md
    fast_placement: bool  # keep cgroup migration fast while sessions are open (warmer.py)


@dataclass(frozen=True)
class NodeConfig:
    reserved_memory: int  # bytes kept for the host


@dataclass(frozen=True)
class TrackingConfig:
    source: str  # auto | ebpf | netlink | procfs | off
    process_usage: bool  # per-process CPU time and peak RSS in eBPF (host-wide cost)


@dataclass(frozen=True)
class DefaultsConfig:
    session_memory: int  # bytes
    session_cpu: float | None  # cores; None = all CPUs
    session_pids: int
    tool_call_grace_seconds: float


@dataclass(frozen=True)
class PrometheusConfig:
    listen: str  # "HOST:PORT" of the metrics endpoint, "" = off
    session_metrics: bool  # per-session series (one set per open session)


@dataclass(frozen=True)
class CollectorConfig:
    enabled: bool  # sample interference metrics (docs/metrics.md)
    period_ms: int  # sampling period
    detail_period_ms: int  # period of the costlier sources (memory.stat, schedstat, ...)
    window_seconds: float  # how much node history the ring keeps
    max_groups: int  # tool calls sampled at once; more are counted, not sampled
    dataset: bool  # record every finished tool call in <state_dir>/dataset.sqlite
    runq_histogram: bool = True  # eBPF run-queue latency per tool call (docs/runqlat.md)


@dataclass(frozen=True)
class PredictorConfig:
    model: Path | None  # model file; None = <state_dir>/predictor.model
    window_seconds: float  # span of the node window a prediction reads
    solo_max_other_cores: float  # a run is "solo" if the rest of the node used at most this


@dataclass(frozen=True)
class ApiConfig:
    """NodeService: its TCP listener (mutual TLS), rate limits and audit log."""

    tcp_listen: str  # "host:port"; "" = no TCP listener (unix socket only)
    tls_cert: Path | None  # the server's certificate and key (PEM)
    tls_key: Path | None
    tls_client_ca: Path | None  # CA that client certificates must chain to
    rate_limit: float  # requests/s per caller (token bucket); 0 = unlimited
    rate_burst: int  # bucket size
    max_watchers: int  # WatchNodeEvents streams over TCP
    audit_log: Path | None  # None = <state_dir>/audit.log
    event_history: int  # events kept for WatchNodeEvents clients that resume
    readers: int  # processes serving the TCP listener's reads (docs/node-api.md); 0 = none
    # ("auto" in the file: AUTO_READERS, or none on one CPU)


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool  # in-kernel guards (needs the eBPF tracking source)
    memory_action: str  # stop | report
    memory_headroom: float  # the cgroup limit sits this fraction above the guard's
    grant_step: float
    wait_seconds: float
    fork_rate: int  # forks/s per tool call, 0 = unbounded
    fork_burst: int
    max_processes: int  # 0 = unbounded
    fork_refusals: int  # forks refused by pids.max before the guard trips, 0 = never
    fork_action: str  # stop | kill
    node_memory: bool  # stop normal/batch tool calls at the node's budget, in the kernel
    node_turn: float  # above this fraction of the node bound one normal/batch grows at a time


@dataclass(frozen=True)
class PrioritiesConfig:
    """Per priority class: CPU weight, memory protection (fraction of the session's
    memory budget) and what the pressure policy writes when it throttles the class."""

    interactive_cpu_weight: int
    normal_cpu_weight: int
    batch_cpu_weight: int
    interactive_memory_protection: float
    normal_memory_protection: float
    batch_memory_protection: float
    normal_throttle_memory_high: float
    batch_throttle_memory_high: float
    normal_throttle_cpu: float
    batch_throttle_cpu: float
    batch_cpu_idle: bool


@dataclass(frozen=True)
class PressureConfig:
    """The node pressure policy (agentd/enforcement): signals, thresholds, pacing."""

    enabled: bool
    interval_seconds: float
    memory_psi_enter: float
    memory_psi_exit: float
    cpu_psi_enter: float
    cpu_psi_exit: float
    usage_enter: float
    usage_exit: float
    guard_window_seconds: float
    dwell_seconds: float
    min_rewrite_interval_seconds: float


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    cgroup: CgroupConfig
    node: NodeConfig
    tracking: TrackingConfig
    defaults: DefaultsConfig
    api: ApiConfig
    guard: GuardConfig
    source: Path | None  # the file that was read, None when there was none
    prometheus: PrometheusConfig = PrometheusConfig(listen="", session_metrics=True)
    collector: CollectorConfig = CollectorConfig(
        enabled=True,
        period_ms=100,
        detail_period_ms=500,
        window_seconds=60.0,
        max_groups=512,
        dataset=True,
    )
    predictor: PredictorConfig = PredictorConfig(
        model=None, window_seconds=1.0, solo_max_other_cores=0.5
    )
    priorities: PrioritiesConfig | None = None
    pressure: PressureConfig | None = None


# --- value parsers: each returns the typed value or raises ValueError(reason) ---


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _absolute_path(value: Any) -> Path:
    text = _string(value)
    if not text.startswith("/"):
        raise ValueError("must be an absolute path")
    return Path(os.path.normpath(text))


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _string(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _socket_mode(value: Any) -> int:
    # Only strings: TOML's `660` would be the decimal 660 (= 0o1224), a trap.
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value.strip()):
        raise ValueError('must be an octal string such as "0660"')
    mode = int(value, 8)
    # Connecting needs write permission on the socket, and whoever can connect can
    # use agentd's API (as themselves): access is granted through a group, never to all.
    if mode & 0o002:
        raise ValueError(
            "must not be writable by others: grant access through socket_group instead"
        )
    if not mode & 0o200:
        raise ValueError("must be writable by its owner")
    return mode


def _socket_group(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        gid = value
    else:
        text = _string(value).strip()
        if text == "":
            return 0
        if text.isdigit():
            gid = int(text)
        else:
            try:
                return grp.getgrnam(text).gr_gid
            except KeyError:
                raise ValueError(f"no group named {text!r} on this host") from None
    if gid < 0:
        raise ValueError("must be a group name or a non-negative gid")
    return gid


def _group_name(value: Any) -> str:
    text = _string(value)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text) or text in (".", ".."):
        raise ValueError("must be a single group name of letters, digits, _ . - (1-64 chars)")
    return text


def _cgroup_path(value: Any) -> str:
    text = _string(value).strip("/")
    if text and not all(
        re.fullmatch(r"[A-Za-z0-9_.@:-]{1,255}", part) and part not in (".", "..")
        for part in text.split("/")
    ):
        raise ValueError("must be a cgroup path like system.slice/agentd-workloads.service")
    return text


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError("must be true or false")


def _size(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValueError('must be a size such as "512M" or "4G"')
        try:
            size = parse_size(value)
        except UnitError as e:
            raise ValueError(str(e)) from None
        if size < minimum:
            raise ValueError(
                "must be greater than zero" if minimum == 1 else f"must be >= {minimum}"
            )
        return size

    return parse


def _cpu(value: Any) -> float | None:
    if isinstance(value, str) and value.strip() == "":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError('must be a number of cores such as "2" or "500m", or "" for all')
    try:
        return parse_cpu(value)
    except UnitError as e:
        raise ValueError(str(e)) from None


def _pids(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("must be an integer")
    if not 1 <= value <= PID_MAX_LIMIT:
        raise ValueError(f"must be between 1 and {PID_MAX_LIMIT}")
    return value


def _seconds(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number >= 0")
    return float(value)


def _listen(value: Any) -> str:
    text = _string(value).strip()
    if text:
        split_listen(text)  # raises ValueError(reason)
    return text


#: `[api] readers = "auto"` on two CPUs or more: two processes for the calls and one
#: that the event streams go to (agentd/api/reuseport.py). Measured on 2 cores
#: (docs/node-api.md, "How many readers"): the lowest p99 at 2,000 scores/s of 0, 2,
#: 3 and 4 (4 was no better). Not measured on bigger nodes; a node's scheduler
#: traffic is bounded by its placements, not its cores, so it is not scaled with them.
AUTO_READERS = 3


def _readers(value: Any) -> int:
    if value == "auto":
        # On one CPU the readers would only take turns with the daemon on it.
        return AUTO_READERS if (os.cpu_count() or 1) >= 2 else 0
    try:
        return _READER_COUNT(value)
    except ValueError:
        raise ValueError('must be "auto" or an integer between 0 and 64') from None


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("must be an integer")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


_READER_COUNT = _int_range(0, 64)


def _weight(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10000:
        raise ValueError("must be an integer cpu weight between 1 and 10000")
    return value


def _unit_fraction(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError("must be a number between 0 and 1")
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return float(value)


def _cores(value: Any) -> float:
    cores = _cpu(value)
    if cores is None or cores <= 0:
        raise ValueError('must be a positive number of cores such as "0.1" or "100m"')
    return cores


def _percent(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError("must be a percentage (0 disables)")
    if not 0 <= value <= 100:
        raise ValueError("must be between 0 and 100 (0 disables)")
    return float(value)


def _positive_seconds(value: Any) -> float:
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError("must be > 0")
    return seconds


def _optional_path(value: Any) -> Path | None:
    return None if _string(value) == "" else _absolute_path(value)


def _listen_address(value: Any) -> str:
    text = _string(value).strip()
    if text == "":
        return ""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})", text)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ValueError('must be "host:port" (e.g. "0.0.0.0:7443", "[::]:7443") or ""')
    return text


def _rate(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError("must be a number of requests per second")
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number >= 0 (0 = unlimited)")
    return float(value)


def _fraction(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError("must be a number such as 0.25")
    if not math.isfinite(value) or not 0 <= value <= 10:
        raise ValueError("must be between 0 and 10")
    return float(value)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000:
        raise ValueError("must be an integer between 1 and 100000")
    return value


def _bound(value: Any) -> int:
    """A process count or rate bound; 0 means unbounded."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("must be an integer")
    if not 0 <= value <= PID_MAX_LIMIT:
        raise ValueError(f"must be between 0 and {PID_MAX_LIMIT}")
    return value


# --- the schema: table -> key -> (default, parser) ---

_Parser = Callable[[Any], Any]

SCHEMA: dict[str, dict[str, tuple[Any, _Parser]]] = {
    "daemon": {
        "socket": ("/run/agentd/agentd.sock", _absolute_path),
        "socket_mode": ("0660", _socket_mode),
        "socket_group": ("", _socket_group),
        "state_dir": ("/var/lib/agentd", _absolute_path),
        "log_format": ("auto", _one_of(LOG_FORMATS)),
        "log_level": ("info", _one_of(LOG_LEVELS)),
    },
    "cgroup": {
        "backend": ("auto", _one_of(BACKENDS)),
        "root": ("agentd", _group_name),
        "delegated": ("", _cgroup_path),
        "fast_placement": (True, _bool),
    },
    "node": {
        "reserved_memory": ("1G", _size(0)),
    },
    "tracking": {
        "source": ("auto", _one_of(TRACKING_SOURCES)),
        "process_usage": (True, _bool),
    },
    "defaults": {
        "session_memory": ("4G", _size(1)),
        "session_cpu": ("", _cpu),
        "session_pids": (4096, _pids),
        "tool_call_grace_seconds": (30, _seconds),
    },
    "collector": {
        "enabled": (True, _bool),
        "period_ms": (100, _int_range(10, 60_000)),
        "detail_period_ms": (500, _int_range(10, 600_000)),
        "window_seconds": (60, _positive_seconds),
        "max_groups": (512, _int_range(1, 100_000)),
        "dataset": (True, _bool),
        "runq_histogram": (True, _bool),
    },
    "predictor": {
        "model": ("", _optional_path),
        "window_seconds": (1, _positive_seconds),
        "solo_max_other_cores": (0.5, _seconds),
    },
    "api": {
        "tcp_listen": ("", _listen_address),
        "tls_cert": ("", _optional_path),
        "tls_key": ("", _optional_path),
        "tls_client_ca": ("", _optional_path),
        "rate_limit": (1000, _rate),
        "rate_burst": (2000, _count),
        "max_watchers": (128, _count),
        "audit_log": ("", _optional_path),
        "event_history": (16384, _count),
        "readers": ("auto", _readers),
    },
    "prometheus": {
        "listen": ("127.0.0.1:9464", _listen),
        "session_metrics": (True, _bool),
    },
    "guard": {
        "enabled": (True, _bool),
        "memory_action": ("stop", _one_of(("stop", "report"))),
        "memory_headroom": (0.25, _fraction),
        "grant_step": (0.25, _fraction),
        "wait_seconds": (10, _seconds),
        "fork_rate": (1000, _bound),
        "fork_burst": (500, _bound),
        "max_processes": (2048, _bound),
        "fork_refusals": (256, _bound),
        "fork_action": ("stop", _one_of(("stop", "kill"))),
        "node_memory": (True, _bool),
        "node_turn": (0.2, _unit_fraction),
    },
    "priorities": {
        "interactive_cpu_weight": (400, _weight),
        "normal_cpu_weight": (100, _weight),
        "batch_cpu_weight": (25, _weight),
        "interactive_memory_protection": (0.5, _unit_fraction),
        "normal_memory_protection": (0.25, _unit_fraction),
        "batch_memory_protection": (0.0, _unit_fraction),
        "normal_throttle_memory_high": (0.75, _unit_fraction),
        "batch_throttle_memory_high": (0.5, _unit_fraction),
        "normal_throttle_cpu": ("500m", _cores),
        "batch_throttle_cpu": ("100m", _cores),
        "batch_cpu_idle": (True, _bool),
    },
    "pressure": {
        "enabled": (True, _bool),
        "interval_seconds": (0.5, _positive_seconds),
        "memory_psi_enter": (20, _percent),
        "memory_psi_exit": (5, _percent),
        "cpu_psi_enter": (0, _percent),
        "cpu_psi_exit": (0, _percent),
        "usage_enter": (0.9, _unit_fraction),
        "usage_exit": (0.75, _unit_fraction),
        "guard_window_seconds": (10, _seconds),
        "dwell_seconds": (5, _seconds),
        "min_rewrite_interval_seconds": (5, _seconds),
    },
}

ENVIRONMENT: dict[str, tuple[str, str]] = {
    "AGENTD_SOCKET": ("daemon", "socket"),
    "AGENTD_STATE_DIR": ("daemon", "state_dir"),
    "AGENTD_CGROUP_ROOT": ("cgroup", "root"),
    "AGENTD_LOG_FORMAT": ("daemon", "log_format"),
    "AGENTD_LOG_LEVEL": ("daemon", "log_level"),
}

# argparse dest -> (table, key, flag as typed)
FLAGS: dict[str, tuple[str, str, str]] = {
    "socket": ("daemon", "socket", "--socket"),
    "state_dir": ("daemon", "state_dir", "--state-dir"),
    "cgroup_root": ("cgroup", "root", "--cgroup-root"),
    "cgroup_backend": ("cgroup", "backend", "--cgroup-backend"),
    "cgroup_delegated": ("cgroup", "delegated", "--cgroup-delegated"),
    "log_format": ("daemon", "log_format", "--log-format"),
    "log_level": ("daemon", "log_level", "--log-level"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that override the file and the environment."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help=f"TOML configuration file (default: {DEFAULT_CONFIG_PATH}, if it exists)",
    )
    group.add_argument("--socket", metavar="PATH", help="unix socket of the agent API")
    group.add_argument("--state-dir", metavar="DIR", help="directory for agentd's state")
    group.add_argument("--cgroup-root", metavar="NAME", help="name of agentd's top cgroup")
    group.add_argument("--cgroup-backend", choices=BACKENDS, help="cgroup version to use")
    group.add_argument(
        "--cgroup-delegated",
        metavar="PATH",
        help="cgroup v2 path delegated to agentd by systemd (agentd-workloads.service)",
    )
    group.add_argument("--log-format", choices=LOG_FORMATS, help="log output format")
    group.add_argument("--log-level", choices=LOG_LEVELS, help="lowest level logged")


def load_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Config:
    """Defaults, overlaid by the file, the environment and the flags, in that order."""
    values: dict[str, dict[str, Any]] = {
        table: {key: parser(default) for key, (default, parser) in keys.items()}
        for table, keys in SCHEMA.items()
    }

    path: Path | None = getattr(args, "config", None)
    explicit = path is not None
    source = Path(path) if explicit else DEFAULT_CONFIG_PATH
    document = _read_file(source, explicit)
    if document is None:
        source = None
    else:
        for table, key, value in _file_entries(source, document):
            values[table][key] = _parse(table, key, value, f"{source}: [{table}] {key}")

    for variable, (table, key) in ENVIRONMENT.items():
        value = environ.get(variable, "")
        # An empty variable counts as unset, as in most daemons' environment files.
        if value != "":
            values[table][key] = _parse(table, key, value, f"environment: {variable}")

    for dest, (table, key, flag) in FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            values[table][key] = _parse(table, key, value, flag)

    daemon = values["daemon"]
    return Config(
        daemon=DaemonConfig(
            socket=daemon["socket"],
            socket_mode=daemon["socket_mode"],
            socket_gid=daemon["socket_group"],
            state_dir=daemon["state_dir"],
            log_format=daemon["log_format"],
            log_level=daemon["log_level"],
        ),
        cgroup=CgroupConfig(**values["cgroup"]),
        node=NodeConfig(**values["node"]),
        tracking=TrackingConfig(**values["tracking"]),
        defaults=DefaultsConfig(**values["defaults"]),
        api=_api_config(values["api"], source),
        guard=GuardConfig(**values["guard"]),
        source=source,
        prometheus=PrometheusConfig(**values["prometheus"]),
        collector=CollectorConfig(**values["collector"]),
        predictor=PredictorConfig(**values["predictor"]),
        priorities=PrioritiesConfig(**values["priorities"]),
        pressure=_pressure_config(values["pressure"]),
    )


def _api_config(values: dict[str, Any], source: Path | None) -> ApiConfig:
    api = ApiConfig(**values)
    if api.tcp_listen:
        missing = [k for k in ("tls_cert", "tls_key", "tls_client_ca") if values[k] is None]
        if missing:
            raise ConfigError(
                f"{source or 'configuration'}: [api] tcp_listen = {api.tcp_listen!r} needs "
                f"{', '.join(missing)}: the TCP listener only serves mutual TLS "
                "(agentctl certs init makes a development CA)"
            )
    return api


def _pressure_config(values: dict[str, Any]) -> PressureConfig:
    """Hysteresis needs each exit threshold at or below its enter threshold."""
    for signal in ("memory_psi", "cpu_psi", "usage"):
        enter, exit_ = values[f"{signal}_enter"], values[f"{signal}_exit"]
        if enter and exit_ > enter:
            raise ConfigError(
                f"[pressure] {signal}_exit = {exit_} is above {signal}_enter = {enter}: "
                "the exit threshold must not exceed the enter threshold (hysteresis)"
            )
    return PressureConfig(**values)


def _parse(table: str, key: str, value: Any, where: str) -> Any:
    try:
        return SCHEMA[table][key][1](value)
    except ValueError as e:
        raise ConfigError(f"{where} = {value!r}: {e}") from None


def _read_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _file_entries(path: Path, document: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(table, key, value) of the file, refusing anything the schema lacks."""
    entries = []
    for table, body in document.items():
        if table not in SCHEMA:
            if not isinstance(body, dict):
                raise ConfigError(
                    f"{path}: {table} = {body!r}: keys belong in a table "
                    f"({', '.join(f'[{t}]' for t in SCHEMA)})"
                )
            raise ConfigError(f"{path}: unknown table [{table}]{_suggest(table, SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {table} = {body!r}: must be a table [{table}]")
        for key, value in body.items():
            if key not in SCHEMA[table]:
                raise ConfigError(
                    f"{path}: [{table}] unknown key {key!r}{_suggest(key, SCHEMA[table])}"
                )
            entries.append((table, key, value))
    return entries


def _suggest(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (known: {', '.join(known)}){hint}"
