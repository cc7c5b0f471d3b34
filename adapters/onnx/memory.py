"""Memory sizes as people write them: ``512MB``, ``1.5GiB``, ``64k``, or a number of bytes."""
from __future__ import annotations

import re

from ...errors import TraceDiffError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(value):
    """Bytes for ``value`` (None stays None: no budget)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TraceDiffError(f"memory budget must be a size like 512MB, got {value!r}")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise TraceDiffError(f"cannot read memory size {value!r}: write it like 512MB, "
                                 "2GiB or 1000000 (bytes)")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise TraceDiffError(f"memory budget must be positive, got {value!r}")
    return size
