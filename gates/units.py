"""Durations as k6 writes them ("30s", "5m", "1h30m", "1m30.5s", "250ms"). Pure code."""

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value) -> float:
    """Seconds in a k6 duration string, or in a plain number of seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
    text = value.strip()
    position, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _FACTORS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f"expected a duration like '30s', '5m' or '1m30s', got {value!r}")
    return total
