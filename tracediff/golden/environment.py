"""What changed in the recorded environment between a golden trace and this run.

Root attributes name the framework and its version; record metadata the device and the dtype of
each tensor. A numerical change that coincides with one of these is usually explained by it.
"""
from __future__ import annotations

ROOT_KEYS = ("framework", "framework_version", "tracediff_version", "python", "platform")
META_KEYS = ("device", "framework_dtype", "training")


def differences(golden, obtained) -> list:
    """Lines ``key: golden X, now Y`` for each environment fact that differs (opened traces)."""
    lines = []
    for key in ROOT_KEYS:
        before, now = golden.attrs.get(key), obtained.attrs.get(key)
        if before != now:
            lines.append(f"{key}: golden {before!r}, now {now!r}")
    for key, before, now in [("dtype", *_values(golden, obtained, lambda r: r.dtype))] + [
            (key, *_values(golden, obtained, lambda r, k=key: r.meta.get(k))) for key in META_KEYS]:
        if before != now:
            lines.append(f"{key}: golden {_listing(before)}, now {_listing(now)}")
    return lines


def _values(golden, obtained, read):
    return ({v for r in golden if (v := read(r)) is not None},
            {v for r in obtained if (v := read(r)) is not None})


def _listing(values) -> str:
    return ", ".join(sorted(str(v) for v in values)) or "(none)"
