"""Include/exclude globs over record names, shared by the adapters' ``include=``/``exclude=``."""
from __future__ import annotations

import fnmatch


def kept(names, include=(), exclude=()) -> bool:
    """True when one of ``names`` matches an ``include`` glob (or none are given) and none of
    them matches an ``exclude`` glob."""
    def matches(globs):
        return any(fnmatch.fnmatchcase(n, g) for n in names for g in globs)

    if include and not matches(include):
        return False
    return not (exclude and matches(exclude))
