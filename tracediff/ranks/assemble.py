"""One logical record from the records every rank wrote of it, reassembled by placement only
when it is read: ``Shard`` parts concatenated along their axis, ``Partial`` parts summed (or
averaged), one ``Replicate`` copy taken (``diagnose`` checks that the copies agree)."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .. import format as fmt
from ..dtypes import numpy_dtype
from ..errors import TraceDiffError
from ..stats import summarize
from ..trace import Record
from .placement import REPLICATE, parse_all


class Part:
    """One rank's record of a logical tensor and where that rank sits in the mesh."""

    def __init__(self, rank: int, record: Record, coord: tuple):
        self.rank = rank
        self.record = record
        self.coord = coord


class AssembledRecord(Record):
    """A record of a multi-rank trace: ``parts`` (one per rank that wrote it) and their
    ``placements`` (one per mesh dimension). ``rank`` is None; ``ranks`` names the writers.
    ``prefer``: the rank whose copy a replicated value is read from (the lowest by default;
    the diff picks the copy that disagrees, see ``diagnose``)."""

    def __init__(self, index, parts: list, placements: tuple, trace):
        first = parts[0].record
        self.parts = parts
        self.placements = placements
        self.prefer = parts[0].rank
        shape = _assembled_shape([(p.coord, p.record.shape) for p in parts], placements)
        stored = all(p.record.stored for p in parts)
        dtype = numpy_dtype(first.dtype)
        super().__init__(
            index=index, name=first.name, kind=first.kind, call=first.call, step=first.step,
            decode_step=first.decode_step, batch_index=first.batch_index,
            dtype=first.dtype, shape=shape, stored=stored, stats=None, hash="",
            nbytes=math.prod(shape) * dtype.itemsize, _meta_text=first._meta_text, _trace=trace,
            rank=None)
        if self.replicated_only and not self._divisor():
            self.hash = first.hash

    def choose(self, rank: int):
        """Read replicated values from ``rank``'s copy (its hash and statistics with them)."""
        self.prefer = rank
        self._stats = None
        if self.replicated_only and not self._divisor():
            self.hash = next(p.record.hash for p in self.parts if p.rank == rank)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)   # from the shape: statistics may be computed from it

    @property
    def ranks(self) -> tuple:
        return tuple(p.rank for p in self.parts)

    @property
    def replicated_only(self) -> bool:
        return all(p.kind == "replicate" for p in self.placements)

    @property
    def stats(self) -> dict:
        if self._stats is None:
            if self.replicated_only and not self._divisor():
                self._stats = dict(self._chosen(self.parts).record.stats)
            elif self.stored:
                self._stats = summarize(self.read())
            else:
                self._stats = self._stats_from_parts()
        return self._stats

    @stats.setter
    def stats(self, value):
        self._stats = value

    # -- values ------------------------------------------------------------------------------
    def read(self) -> np.ndarray:
        return self.assemble(lambda record: record.read())

    def view(self) -> np.ndarray:
        out = np.asarray(self.assemble(lambda record: record.view()))
        if out.flags.writeable:
            out = out.view()
            out.flags.writeable = False
        return out

    def check_span(self):
        for part in self.parts:
            part.record.check_span()

    def sample(self):
        if self.stored:
            return super().sample()
        if any(p.kind == "shard" for p in self.placements):
            raise TraceDiffError(
                f"record {self.name!r} ({self.kind}) is sharded across ranks "
                f"{ranks_text(self.ranks)} and holds statistics only: its shards cannot be "
                "reassembled; record with values=True")
        # every part has the whole tensor's size, hence the same sample indices
        indices = fmt.sample_indices(self.numel)
        return indices, self.assemble(lambda record: record.sample()[1])

    def assemble(self, read_part, placements=None) -> np.ndarray:
        """The logical tensor from ``read_part(record)`` of each part; ``placements`` to read
        it as if placed otherwise (``diagnose`` tries other axes and reductions)."""
        placements = placements or self.placements
        level = defaultdict(list)
        for part in self.parts:
            level[part.coord].append(part)
        current = {coord: read_part(self._chosen(parts).record) for coord, parts in level.items()}
        for mdim in reversed(range(len(placements))):
            groups = defaultdict(list)
            for coord, value in sorted(current.items(), key=lambda item: item[0]):
                groups[coord[:mdim]].append((coord[mdim], value))
            current = {key: _combine([v for _, v in sorted(items, key=lambda i: i[0])],
                                     placements[mdim], self._prefer_coord(mdim, items))
                       for key, items in groups.items()}
        (value,) = current.values()
        divisor = self._divisor()
        if divisor:
            value = (np.asarray(value, np.float64) / divisor).astype(value.dtype)
        return value

    def _divisor(self):
        """Meta ``grad_divisor``: the recorded gradient is this many times the run's (a
        data-parallel rank's loss is the mean over its own part of the batch)."""
        divisor = self.meta.get("grad_divisor")
        if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) and divisor > 1:
            return divisor
        return None

    def _chosen(self, parts):
        """Of parts at one mesh coordinate (replicas over ranks outside the mesh), ``prefer``'s."""
        return next((p for p in parts if p.rank == self.prefer), parts[0])

    def _prefer_coord(self, mdim, items) -> int:
        """The position along mesh dimension ``mdim`` whose replica is read."""
        preferred = next((p.coord for p in self.parts if p.rank == self.prefer), None)
        if preferred is None:
            return 0
        positions = [position for position, _ in sorted(items, key=lambda i: i[0])]
        return positions.index(preferred[mdim]) if preferred[mdim] in positions else 0

    def _stats_from_parts(self) -> dict:
        """Statistics of a stats-only record from its parts' (exact for counts, extremes and
        norms of shards; a Partial's from its summed sample)."""
        if any(p.kind == "partial" for p in self.placements):
            _, values = self.sample()
            stats = summarize(values)
            scale = math.sqrt(self.numel / max(values.size, 1))
            return {**stats, "numel": self.numel, "l2": stats["l2"] * scale}
        parts = [p.record.stats for p in self.parts]
        numel = sum(s["numel"] for s in parts) or 1
        finite = [s for s in parts if s["numel"] and not math.isnan(s["mean"])]
        mean = sum(s["mean"] * s["numel"] for s in finite) / numel if finite else math.nan
        var = sum((s["std"] ** 2 + (s["mean"] - mean) ** 2) * s["numel"] for s in finite) / numel \
            if finite else math.nan
        return {"numel": self.numel, "min": min((s["min"] for s in finite), default=math.nan),
                "max": max((s["max"] for s in finite), default=math.nan), "mean": mean,
                "std": math.sqrt(var) if finite else math.nan,
                "l2": math.sqrt(sum(s["l2"] ** 2 for s in parts)),
                "nan": sum(s["nan"] for s in parts), "inf": sum(s["inf"] for s in parts),
                "zero_frac": sum(s["zero_frac"] * s["numel"] for s in parts) / numel}


def _combine(values: list, placement, prefer: int) -> np.ndarray:
    if placement.kind == "shard":
        return np.concatenate(values, axis=placement.axis(values[0].ndim))
    if placement.kind == "partial":
        total = np.sum([np.asarray(v, np.float64) for v in values], axis=0)
        if placement.reduce == "avg":
            total /= len(values)
        return np.asarray(total).astype(values[0].dtype)
    return values[prefer]


def _assembled_shape(parts, placements) -> tuple:
    """The logical shape, from the parts' shapes alone (nothing is read)."""
    by_coord = {}
    for coord, shape in parts:
        by_coord.setdefault(coord, tuple(shape))
    current = by_coord
    for mdim in reversed(range(len(placements))):
        groups = defaultdict(list)
        for coord, shape in sorted(current.items()):
            groups[coord[:mdim]].append(shape)
        placement = placements[mdim]
        current = {}
        for key, shapes in groups.items():
            shape = shapes[0]
            if placement.kind == "shard" and shape:
                axis = placement.axis(len(shape))
                if 0 <= axis < len(shape):
                    shape = shape[:axis] + (sum(s[axis] for s in shapes),) + shape[axis + 1:]
            current[key] = shape
    (shape,) = current.values()
    return shape


def placements_of(record: Record, mesh_ndim: int, where: str) -> tuple:
    """The record's meta ``placement`` (Replicate on every mesh dimension when it has none)."""
    value = record.meta.get("placement")
    if value is None:
        return (REPLICATE,) * mesh_ndim
    return parse_all(value, mesh_ndim, where)


def ranks_text(ranks) -> str:
    """``0, 1`` or ``0-7``: the ranks a message names."""
    ranks = sorted(ranks)
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks))

