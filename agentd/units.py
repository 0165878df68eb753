"""Parsing of the sizes and CPU amounts that users type ("512M", "1.5GiB", "500m").

One parser for the daemon, the SDK and agentctl, so that a value means the same
everywhere and is refused with the same message.
"""

from __future__ import annotations

import math
import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)([bB]?)\s*$")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


class UnitError(ValueError):
    """A value that is not a valid size or CPU amount; the message says why."""


def parse_size(value: str | int) -> int:
    """Bytes from `512M`, `2G`, `1.5GiB`, `4096` or an int.

    Suffixes are binary (K = 1024), as in cgroupfs and in most tools agents use;
    `KB`/`KiB` are accepted as the same thing.
    """
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value} is negative")
        return value
    match = _SIZE.match(value)
    if not match:
        raise UnitError(f"{value!r} is not a size (examples: 512M, 2G, 1.5GiB, 1048576)")
    number, suffix, _, _ = match.groups()
    result = float(number) * 1024 ** _POWERS[suffix.lower()]
    if not math.isfinite(result) or result >= 2**63:
        raise UnitError(f"{value!r} is too large")
    return int(result)


def parse_cpu(value: str | float | int) -> float:
    """Cores from `0.5`, `2`, `500m` (millicores) or a number."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a CPU amount")
    if isinstance(value, int | float):
        cores = float(value)
    else:
        text = value.strip()
        try:
            cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            raise UnitError(f"{value!r} is not a CPU amount (examples: 0.5, 2, 500m)") from None
    if not math.isfinite(cores) or cores <= 0:
        raise UnitError(f"{value!r} must be a positive number of cores")
    if cores > 4096:
        raise UnitError(f"{value!r} is more cores than any machine has")
    return cores


def format_size(num_bytes: int) -> str:
    """The shortest exact binary form: 536870912 -> '512M'."""
    for suffix, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        unit = 1024**power
        if num_bytes >= unit and num_bytes % unit == 0:
            return f"{num_bytes // unit}{suffix}"
    return str(num_bytes)
