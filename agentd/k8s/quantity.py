"""Kubernetes resource quantities ("512Mi", "2G", "500m", "1e3") as numbers.

The grammar of k8s.io/apimachinery's resource.Quantity: a decimal number, then a
binary suffix (Ki Mi Gi Ti Pi Ei), a decimal SI suffix (n u m "" k M G T P E) or
a decimal exponent (e3, E-2). Note "2G" is 2*10^9 here, not agentd's 2 GiB: pod
annotations use Kubernetes' units, as everything else in a pod spec does.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))((?:[eE][+-]?\d+)|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


class QuantityError(ValueError):
    pass


def parse_quantity(text: str) -> Decimal:
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise QuantityError(
            f"{text!r} is not a Kubernetes quantity (examples: 512Mi, 2Gi, 500m, 1.5)"
        )
    number, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise QuantityError(f"{text!r} is not a number") from None
    if suffix in _BINARY:
        value *= Decimal(1024) ** _BINARY[suffix]
    elif suffix[:1] in ("e", "E"):
        value *= Decimal(10) ** int(suffix[1:])
    else:
        value *= Decimal(10) ** _DECIMAL[suffix]
    if value < 0:
        raise QuantityError(f"{text!r} is negative")
    return value


def bytes_of(text: str) -> int:
    """Bytes, rounded up as Kubernetes does for memory."""
    value = parse_quantity(text)
    whole = int(value.to_integral_value(rounding="ROUND_CEILING"))
    if whole >= 2**63:
        raise QuantityError(f"{text!r} is too large")
    return whole


def cores_of(text: str) -> float:
    value = parse_quantity(text)
    if value > 4096:
        raise QuantityError(f"{text!r} is more cores than any machine has")
    return float(value)
