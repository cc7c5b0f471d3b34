"""Placements of a tensor over a device mesh, as meta ``placement`` writes them: ``Shard(d)``
(split along tensor axis d, negative counted from the end), ``Replicate()`` (every rank holds
the whole tensor), ``Partial(sum)`` / ``Partial(avg)`` (every rank holds a term; the tensor is
their sum or mean). One string per mesh dimension: a 1-D mesh's is a plain string, an N-D mesh's
a list (docs/format.md "Multi-rank traces")."""
from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import TraceDiffError

_SYNTAX = re.compile(r"^\s*(Shard|Replicate|Partial)\s*\(\s*(?:dim\s*=\s*)?([-+]?\d+|sum|avg|"
                     r"reduce_op\s*=\s*'?(?:sum|avg)'?)?\s*\)\s*$")
REDUCTIONS = ("sum", "avg")


class Placement(NamedTuple):
    kind: str          # "shard", "replicate" or "partial"
    dim: int = 0       # shard: the tensor axis
    reduce: str = ""   # partial: "sum" or "avg"

    def __str__(self):
        if self.kind == "shard":
            return f"Shard({self.dim})"
        if self.kind == "partial":
            return f"Partial({self.reduce})"
        return "Replicate()"

    def axis(self, ndim: int) -> int:
        """The shard axis counted from 0 for a tensor of ``ndim`` axes."""
        return self.dim + ndim if self.dim < 0 else self.dim


REPLICATE = Placement("replicate")


def parse(text, where="placement") -> Placement:
    """``"Shard(-1)"``, ``"Replicate()"``, ``"Partial()"`` (sum), ``"Partial(avg)"``; also what
    ``str()`` of a torch DTensor placement gives (``Shard(dim=0)``, ``Partial(sum)``)."""
    match = _SYNTAX.match(text) if isinstance(text, str) else None
    if match is None:
        raise TraceDiffError(
            f"{where}: {text!r} is not a placement: use Shard(d), Replicate(), Partial(sum) "
            "or Partial(avg)")
    kind, argument = match.group(1).lower(), match.group(2)
    if kind == "shard":
        if argument is None or not argument.lstrip("+-").isdigit():
            raise TraceDiffError(f"{where}: {text!r} names no axis: write Shard(d), e.g. Shard(0)")
        return Placement("shard", dim=int(argument))
    if kind == "partial":
        reduce = "avg" if argument and "avg" in argument else "sum"
        return Placement("partial", reduce=reduce)
    if argument is not None:
        raise TraceDiffError(f"{where}: {text!r}: Replicate() takes no argument")
    return REPLICATE


def parse_all(value, mesh_ndim: int, where="placement") -> tuple:
    """One Placement per mesh dimension from meta ``placement`` (a string, or a list of them)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or len(items) != mesh_ndim:
        raise TraceDiffError(
            f"{where}: placement {value!r} does not give one placement per dimension of the "
            f"{mesh_ndim}-D device mesh")
    return tuple(parse(item, where) for item in items)


def text(placements) -> str | list:
    """Meta ``placement`` for a tuple of placements (a plain string on a 1-D mesh)."""
    items = [str(p) for p in placements]
    return items[0] if len(items) == 1 else items
