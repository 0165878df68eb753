"""Structured logging for the daemon: structlog to stderr, one event per line.

Under systemd, stderr goes to the journal, where JSON lines are what log
shippers parse; in a terminal, people want colours and aligned columns. The
stdlib `logging` records of libraries (grpc, asyncio) go through the same
renderer, so the output stays one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Libraries that log chatty internals at INFO; they only get through at debug.
_QUIET_LIBRARIES = ("grpc", "asyncio", "pyroute2")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that a second configure_logging() replaces it instead of doubling lines."""


def configure_logging(format: str, level: str) -> None:
    """Set up structlog and stdlib logging; `format` is auto, json or console.

    `auto` means JSON unless stderr is a terminal. Safe to call again (tests,
    a reload): the previous setup is replaced.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(LEVELS)}")
    if format == "auto":
        format = "console" if sys.stderr.isatty() else "json"
    if format not in ("json", "console"):
        raise ValueError(f"unknown log format {format!r}; one of auto, json, console")
    threshold = LEVELS[level]

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if format == "json":
        # Tracebacks as one string field: the line stays one JSON object.
        shared += [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*shared, renderer],
        # Filtering in the bound logger makes a disabled debug() call nearly free.
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        # Not cached: a later configure_logging() must reach loggers already bound.
        cache_logger_on_first_use=False,
    )

    handler = _Handler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(
            threshold if threshold <= logging.DEBUG else logging.WARNING
        )
    logging.captureWarnings(True)
