"""Which records to write: include/exclude globs over record names, and a subset of kinds."""
from __future__ import annotations

import functools
import re

from tracediff import format as fmt
from tracediff.errors import TraceDiffError
from tracediff.select import kept


def _globs(value, argument):
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        globs = tuple(value)
    except TypeError:
        raise TraceDiffError(f"{argument}= must be a glob string or a list of globs, got {value!r}") from None
    if not all(isinstance(g, str) for g in globs):
        raise TraceDiffError(f"{argument}= must hold glob strings only, got {list(globs)!r}")
    return globs


class Selection:
    """``include``/``exclude`` globs match a record's full name (``lstm:1:0``, ``enc/matmul#0``)
    or its module part (``lstm``, ``enc``); ``kinds`` restricts the record kinds written."""

    def __init__(self, include=None, exclude=None, kinds=None):
        self.include = _globs(include, "include")
        self.exclude = _globs(exclude, "exclude")
        if kinds is None:
            self.kinds = frozenset(fmt.KINDS)
        else:
            kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
            unknown = [k for k in kinds if k not in fmt.KINDS]
            if unknown:
                raise TraceDiffError(
                    f"unknown record kind(s) {', '.join(map(repr, unknown))} in kinds=: "
                    f"use a subset of {', '.join(fmt.KINDS)}")
            self.kinds = frozenset(kinds)

    def wants_kind(self, kind) -> bool:
        return kind in self.kinds

    def wants(self, kind, name) -> bool:
        if kind not in self.kinds:
            return False
        return _matches(name, self.include, self.exclude)


@functools.lru_cache(maxsize=1 << 16)  # shared by the steps of a loop: each makes a Selection
def _matches(name, include, exclude) -> bool:
    return kept({name, re.split(r"[:/]", name, maxsplit=1)[0]}, include, exclude)
