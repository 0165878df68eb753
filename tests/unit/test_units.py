from __future__ import annotations

import pytest

from agentd.units import UnitError, format_size, parse_cpu, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1.5GiB", 3 << 29),
        ("4096", 4096),
        ("64k", 64 << 10),
        ("1T", 1 << 40),
        (" 3 MB ", 3 << 20),
        (0, 0),
        (123, 123),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-1", "lots", "1.5.3G", "2X", "", "G", "1e3", "9" * 30 + "T"])
def test_bad_sizes_say_why(text: str) -> None:
    with pytest.raises(UnitError) as err:
        parse_size(text)
    assert repr(text) in str(err.value) or "negative" in str(err.value)


def test_negative_and_bool_sizes_are_refused() -> None:
    with pytest.raises(UnitError, match="negative"):
        parse_size(-5)
    with pytest.raises(UnitError):
        parse_size(True)


@pytest.mark.parametrize(
    ("text", "expected"), [("0.5", 0.5), ("2", 2.0), ("500m", 0.5), (1, 1.0), (0.25, 0.25)]
)
def test_cpu(text: str | float, expected: float) -> None:
    assert parse_cpu(text) == expected


@pytest.mark.parametrize("text", ["-2", "0", "half", "nan", "inf", "5000", "m"])
def test_bad_cpu(text: str) -> None:
    with pytest.raises(UnitError):
        parse_cpu(text)


def test_format_size_round_trips() -> None:
    for value in (512 << 20, 2 << 30, 4096, 1000):
        assert parse_size(format_size(value)) == value
    assert format_size(512 << 20) == "512M"
