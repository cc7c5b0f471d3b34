"""Prime-sized dimensions: give every named axis a distinct prime so that any axis of any
tensor can be identified by its size, and render shapes symbolically."""
from __future__ import annotations

from itertools import count

from .errors import TraceDiffError


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % p for p in range(2, int(n ** 0.5) + 1))


def primes(start: int = 2):
    """Primes >= start, in order."""
    for n in count(max(2, start)):
        if _is_prime(n):
            yield n


def dims(*names: str, minimum: int = 3, minimums: dict | None = None, exclude=()) -> dict:
    """Distinct primes for named dimensions, in the order given.

    ``dims("batch", "seq", "hidden")`` -> ``{"batch": 3, "seq": 5, "hidden": 7}``.
    ``minimums`` sets a floor per name (``{"hidden": 32}`` -> 37); ``exclude`` skips sizes.
    """
    if len(set(names)) != len(names):
        raise TraceDiffError(f"dimension names repeat in {list(names)}: give each axis its own name")
    minimums = minimums or {}
    taken = set(int(e) for e in exclude)
    out = {}
    for name in names:
        floor = int(minimums.get(name, minimum))
        size = next(p for p in primes(floor) if p not in taken)
        taken.add(size)
        out[name] = size
    return out


def collisions(named: dict) -> list:
    """Groups of dimension names that share a size (a swap between them cannot be seen)."""
    by_size = {}
    for name, size in named.items():
        by_size.setdefault(int(size), []).append(name)
    return [names for size, names in sorted(by_size.items()) if len(names) > 1 and size > 1]


def symbol(size: int, named: dict) -> str:
    """A name for one axis size: ``hidden``, ``hidden*3``, ``batch*seq``, or the number."""
    size = int(size)
    if size <= 1 or not named:
        return str(size)
    by_size = {}
    for name, value in named.items():
        if int(value) > 1:
            by_size.setdefault(int(value), name)
    if size in by_size:
        return by_size[size]
    items = sorted(by_size.items())
    for v1, n1 in items:
        for v2, n2 in items:
            if v2 >= v1 and v1 * v2 == size:
                return f"{n1}*{n2}"
    for v1, n1 in items:
        for v2, n2 in items:
            for v3, n3 in items:
                if v1 <= v2 <= v3 and v1 * v2 * v3 == size:
                    return f"{n1}*{n2}*{n3}"
    for value, name in items:
        if size % value == 0 and size // value <= 16:
            return f"{name}*{size // value}"
    return str(size)


def render_shape(shape, named: dict | None) -> str:
    """``[batch, seq, hidden]`` when the trace declares dims, ``[3, 5, 7]`` otherwise."""
    if not named:
        return "[" + ", ".join(str(int(d)) for d in shape) + "]"
    return "[" + ", ".join(symbol(d, named) for d in shape) + "]"
