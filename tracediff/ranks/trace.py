"""``td.open(folder)`` of a multi-rank trace: every rank's file opened, its records grouped by
(step, kind, name, call) into one logical trace of ``AssembledRecord``s."""
from __future__ import annotations

import os

import numpy as np

from ..errors import TraceFormatError
from ..trace import Trace, open_trace
from . import manifest as manifests
from .assemble import AssembledRecord, Part, placements_of, ranks_text


class RankedTrace(Trace):
    """A multi-rank trace read as one: iterating gives the logical records (``rank`` None,
    ``ranks`` the writers); ``rank_traces[r]`` is rank r's own trace, whose records carry
    ``rank`` r."""

    def __init__(self, path):   # noqa: D107 - Trace.__init__ opens one HDF5 file; this opens many
        self.path = os.fspath(path)
        self.manifest = manifests.read(self.path)
        self.world_size = self.manifest["world_size"]
        self.mesh_shape = tuple(self.manifest["mesh"]["shape"])
        self.rank_traces = []
        try:
            self._open_ranks()
            self._assemble()
        except BaseException:
            self.close()
            raise

    def _open_ranks(self):
        missing, incomplete = [], []
        for entry in self.manifest["ranks"]:
            file = os.path.join(self.path, entry["file"])
            if not os.path.isfile(file):
                missing.append((entry["rank"], entry["file"]))
                continue
            trace = open_trace(file, warn_incomplete=False)
            self.rank_traces.append(trace)
            if not trace.complete:
                incomplete.append((entry["rank"], entry["file"]))
            written = trace.attrs.get("rank")   # files written without it are taken as listed
            if isinstance(written, int) and written != entry["rank"]:
                raise TraceFormatError(
                    f"{file} was written by rank {written}, but the manifest of {self.path} "
                    f"lists it as rank {entry['rank']}; record the run again")
        if missing or incomplete:
            parts = []
            if missing:
                parts.append(f"rank(s) {ranks_text([r for r, _ in missing])} missing "
                             f"({', '.join(f for _, f in missing)})")
            if incomplete:
                parts.append(f"rank(s) {ranks_text([r for r, _ in incomplete])} incomplete "
                             f"(their writer did not close {', '.join(f for _, f in incomplete)})")
            raise TraceFormatError(
                f"{self.path}: {'; '.join(parts)} of {self.world_size} rank(s); every rank must "
                "record and close its trace: record the run again")
        first = self.rank_traces[0]
        self.attrs = dict(first.attrs, world_size=self.world_size, rank=None)
        self.version = first.version
        self.complete = True

    def _assemble(self):
        groups = {}
        for rank, trace in enumerate(self.rank_traces):
            for record in trace:
                key = (record.position, record.kind, record.name, record.call)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = []
                group.append((rank, record))
        ordered = sorted(groups.items(), key=lambda item: item[0][0])  # stable: rank 0's order
        self._records = [self._logical(index, members) for index, (_, members) in enumerate(ordered)]

    def _logical(self, index, members) -> AssembledRecord:
        rank, record = members[0]
        where = f"{self.path}: rank {rank}, {record.kind} {record.name!r}"
        mesh = record.meta.get("mesh")
        mesh_shape = tuple(mesh) if isinstance(mesh, list) and mesh else self.mesh_shape
        placements = placements_of(record, len(mesh_shape), where)
        for placement in placements:
            if placement.kind == "shard" and not -len(record.shape) <= placement.dim < len(record.shape):
                raise TraceFormatError(
                    f"{where}: placement {placement} names an axis a tensor of shape "
                    f"{list(record.shape)} does not have; fix the shards= declaration")
        parts = [Part(r, rec, self._coord(r, rec, mesh_shape)) for r, rec in members]
        return AssembledRecord(index, parts, placements, self)

    def _coord(self, rank, record, mesh_shape) -> tuple:
        coord = record.meta.get("mesh_coord")
        if isinstance(coord, list) and len(coord) == len(mesh_shape):
            return tuple(int(c) for c in coord)
        if int(np.prod(mesh_shape)) != self.world_size:
            raise TraceFormatError(
                f"{self.path}: rank {rank}'s {record.kind} {record.name!r} lies on a device mesh "
                f"{list(mesh_shape)} but has no mesh_coord; record the run again")
        return tuple(int(c) for c in np.unravel_index(rank, mesh_shape))

    @property
    def rank(self):
        return None

    def close(self):
        for trace in self.rank_traces:
            trace.close()

    def __repr__(self):
        return (f"<tracediff.RankedTrace {self.path!r}: {self.world_size} ranks, {len(self)} "
                f"logical records, framework={self.framework!r}>")


def open_ranked(path) -> RankedTrace:
    return RankedTrace(path)


def is_ranked_trace(trace) -> bool:
    return isinstance(trace, RankedTrace)

