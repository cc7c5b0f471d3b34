"""What only a multi-rank trace can be wrong in, found before the diff compares it with its
reference: replicated copies that disagree (a diverged replica, or a missing all-reduce when
their sum is the reference) and shards taken along another axis than their placement says.
Each is a report finding naming the record and the ranks (docs/diff.md "Multi-rank traces");
a disagreeing replicated record is then compared through its copy farthest from the reference,
so the layer diverges in the report too."""
from __future__ import annotations

import numpy as np

from .assemble import AssembledRecord, ranks_text
from .placement import Placement
from .trace import RankedTrace

# Inputs and parameters are state, each wrong on its own; of the computed records (activations,
# gradients, loss) the first finding is reported and the later ones counted in it.
_GROUPS = {"input": "input", "param": "param"}
CLOSE = 1e-4          # relative L2 distance within which two copies agree


def prepare(ta, tb) -> list:
    """The findings of the multi-rank side(s) of a diff of ``ta`` (a) against ``tb`` (b)."""
    out = []
    first = {}       # (side, group) -> the earliest finding: later ones may follow from it
    for trace, other, side in ((ta, tb, "a"), (tb, ta, "b")):
        if isinstance(trace, RankedTrace):
            lookup = {(r.position, r.kind, r.name, r.call): r for r in other}
            for record in trace:
                reference = lookup.get((record.position, record.kind, record.name, record.call))
                finding = _replicas(record, reference) or _shard_axis(record, reference)
                if not finding:
                    continue
                group = (side, _GROUPS.get(record.kind, "computed"))
                earlier = first.get(group)
                if earlier is not None:
                    earlier["layers"] += 1
                    continue
                first[group] = {"a_name": record.name, "b_name": record.name,
                                              "layers": 1, "side": side,
                                              "record_kind": record.kind, **finding}
                out.append(first[group])
    for finding in out:
        if finding["layers"] > 1:
            finding["message"] += (f" (and {finding['layers'] - 1} later record(s) with rank "
                                   "findings, which may follow from it)")
    return out


def annotate(report, notes):
    """Each finding's text leads the hint of its layer's pair."""
    for note in notes:
        name_key = "a_name" if note["side"] == "a" else "b_name"
        for pair in report.pairs:
            if getattr(pair, name_key) == note[name_key] and pair.kind == note["record_kind"]:
                text = f"{note['kind']}: {note['message']}"
                pair.hint = text if not pair.hint else f"{text}; {pair.hint}"
    # an input whose shards were joined along the wrong axis is explained by that finding, not
    # by the rearrangement the inputs finding would describe
    joined_wrong = {n["a_name"] for n in notes if n["kind"] == "shard_axis" and n["record_kind"] == "input"}
    report.findings = notes + [f for f in report.findings
                               if not (f.get("kind") == "inputs" and f.get("a_name") in joined_wrong)]


def _replicas(record: AssembledRecord, reference):
    if not record.replicated_only or len(record.parts) < 2:
        return None
    hashes = {p.record.hash for p in record.parts}
    if len(hashes) == 1 and "" not in hashes:
        return None          # the same bytes on every rank
    if not record.stored:
        return None if len(hashes) == 1 else _stats_only_replicas(record)
    values = {p.rank: np.asarray(p.record.read(), np.float64) for p in record.parts}
    first = record.parts[0].rank
    apart = [r for r, v in values.items() if not _close(v, values[first])]
    if not apart:
        return None
    label = f"{record.kind} {record.name}"
    ranks = sorted(values)
    ref = _reference_values(reference, values[first].shape)
    if ref is not None:
        errors = {r: _distance(v, ref) for r, v in values.items()}
        record.choose(max(errors, key=errors.get))     # the diff compares the worst copy
        total = np.sum(list(values.values()), axis=0)
        for reduce, combined in (("sum", total), ("mean", total / len(values))):
            if _close(combined, ref):
                return {"kind": "missing_all_reduce", "ranks": ranks, "message": (
                    f"{label}: the copies on ranks {ranks_text(ranks)} disagree and their "
                    f"{reduce} is the reference's: a missing all-reduce ({'avg' if reduce == 'mean' else 'sum'}) "
                    "— each rank holds a partial result where a replicated one belongs")}
        good = [r for r in ranks if _close(values[r], ref)]
        bad = [r for r in ranks if r not in good]
        agree = (f"; rank(s) {ranks_text(good)} agree with the reference" if good
                 else "; no copy matches the reference")
        return {"kind": "replica", "ranks": bad, "message": (
            f"{label}: the replica on rank(s) {ranks_text(bad)} diverged (rel_l2 "
            f"{max(errors[r] for r in bad):.3g} from the reference){agree}")}
    record.choose(apart[0])
    return {"kind": "replica", "ranks": apart, "message": (
        f"{label}: the replica on rank(s) {ranks_text(apart)} differs from rank {first}'s "
        f"(rel_l2 {max(_distance(values[r], values[first]) for r in apart):.3g})")}


def _stats_only_replicas(record):
    first = record.parts[0]
    apart = [p.rank for p in record.parts if p.record.hash != first.record.hash]
    return {"kind": "replica", "ranks": apart, "message": (
        f"{record.kind} {record.name}: the replica on rank(s) {ranks_text(apart)} differs from "
        f"rank {first.rank}'s (their hashes differ; statistics-only records)")}


def _shard_axis(record: AssembledRecord, reference):
    """A 1-D mesh Shard record whose parts join into the reference's shape and values only
    along another axis. Parts joined along two different axes never give the same shape, so a
    record already of the reference's shape is not read."""
    if len(record.placements) != 1 or record.placements[0].kind != "shard" or not record.stored \
            or reference is None or not reference.stored or len(record.parts) < 2 \
            or tuple(record.shape) == tuple(reference.shape):
        return None
    shapes = [p.record.shape for p in record.parts]
    declared = record.placements[0].axis(len(shapes[0]))
    ref = None
    for axis in range(len(shapes[0])):
        joined = list(shapes[0])
        joined[axis] = sum(s[axis] for s in shapes)
        if axis == declared or tuple(joined) != tuple(reference.shape) or any(
                s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
            continue
        ref = np.asarray(reference.read(), np.float64) if ref is None else ref
        values = record.assemble(lambda r: r.read(), (Placement("shard", dim=axis),))
        if _close(np.asarray(values, np.float64), ref):
            ranks = list(record.ranks)
            return {"kind": "shard_axis", "ranks": ranks, "message": (
                f"{record.kind} {record.name}: recorded as {record.placements[0]} on ranks "
                f"{ranks_text(ranks)}, but its shards join into the reference along axis {axis}: "
                f"a shard taken along the wrong axis (axis {axis}, not {declared})")}
    return None


def _reference_values(reference, shape):
    if reference is None or not reference.stored:
        return None
    if shape is not None and tuple(reference.shape) != tuple(shape):
        return None
    return np.asarray(reference.read(), np.float64)


def _distance(x, y) -> float:
    scale = float(np.linalg.norm(y))
    return float(np.linalg.norm(x - y)) / (scale if scale > 0 else 1.0)


def _close(x, y) -> bool:
    if x.shape != y.shape:
        return False
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return bool(np.array_equal(x, y, equal_nan=True))
    scale = max(float(np.linalg.norm(y)), float(np.linalg.norm(x)))
    return float(np.linalg.norm(x - y)) <= CLOSE * scale + 1e-12
