"""Parsing of human sizes ("10G", "512MiB") and durations ("1h", "30m")."""

from __future__ import annotations

import re

from cachemgr.errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes in ``text`` ("1.5G", "200MB", "4096"); ConfigError if malformed."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"{what}: {text!r} is not a size; write e.g. 500M, 10G or 1TiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """Seconds in ``text`` ("90s", "1h", "7d"); ConfigError if malformed."""
    if isinstance(text, int | float):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ConfigError(f"{what}: {text!r} is not a duration; write e.g. 90s, 30m, 1h or 7d")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 model``, ``2 models``: counts as people write them."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def format_size(n: int) -> str:
    """``n`` bytes as a short human string, the one style every command prints (binary units:
    1.0 KiB = 1024 bytes, as ``10G`` means 10 GiB when parsed; ``10GB`` parses as 10^9)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_age(seconds: float) -> str:
    """A duration in the style of the duration flags: 45s, 2.5m, 1.0h, 3.2d."""
    seconds = max(0.0, seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f}{unit}"
    return f"{seconds:.0f}s"
