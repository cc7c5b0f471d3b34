"""Re-pairing by values where the order-preserving alignment crossed two branches.

A converter may emit a residual block's branches in another order than the reference runs them:
onnx2keras emits the downsample conv of a ResNet block before the main branch's second conv, so
the structural alignment, which keeps both traces' order, pairs each conv with the other one. Such
false pairs are far apart in value (or have no layout that reproduces the values) while their
true partners sit a few records away, paired wrongly too or left unmatched.

Each suspect record (a side of such a pair) is compared with the suspects and the unmatched
records of the other trace near it (two unmatched records only when both are parameters, or
activations of one known op family): a pairing whose values agree (at their tolerance, through
any layout the diff finds) replaces the crossed ones, best first; a record whose values agree
with several candidates equally well (zero-initialised statistics) is left as it was. A planted
bug cannot be re-paired away: its values agree with no other record, and records in pairs that
agree are never candidates.
"""
from __future__ import annotations

from .families import family

SUSPECT_REL_L2 = 0.5   # a diverged activation pair this far apart may be a false pair
NORM_SLACK = 0.05      # values that agree have L2 norms this close (any layout keeps the norm)
MAX_TRIALS = 2000      # more plausible pairings than this: two different models, not a crossing
WINDOW = 8             # how many activations apart two suspects may be (parameters: any,
                       # since frameworks write buffers at different places)
KINDS = ("forward", "backward", "param", "param_grad")


def rematch(pairs, unmatched_a, unmatched_b, ta, tb, compare):
    """``(pairs, unmatched_a, unmatched_b)`` with crossed pairs replaced by the pairings the
    values show; ``compare(ra, rb) -> Pair`` compares one candidate pairing. Pairs keep b's
    execution order. Nothing is compared unless some pair is suspect."""
    for kind in KINDS:
        if any(p.kind == kind and _suspect(p) for p in pairs):
            pairs, unmatched_a, unmatched_b = _rematch_kind(kind, pairs, unmatched_a, unmatched_b,
                                                            ta, tb, compare)
    return pairs, unmatched_a, unmatched_b


def _suspect(pair) -> bool:
    """A pair that may be false: any diverged parameter (a correct port copies them exactly, and
    there are few), an activation or gradient far apart or of no reproducing layout."""
    if pair.status == "shape_mismatch":
        return True
    if pair.status != "diverged":
        return False
    return pair.kind in ("param", "param_grad") or (pair.rel_l2 or 0.0) > SUSPECT_REL_L2


def _rematch_kind(kind, pairs, unmatched_a, unmatched_b, ta, tb, compare):
    suspects = [p for p in pairs if p.kind == kind and _suspect(p)]
    pool_a = {p.a_index: p for p in suspects}
    pool_b = {p.b_index: p for p in suspects}
    records_a = [r for r in unmatched_a if r.kind == kind] + [ta[p.a_index] for p in suspects]
    records_b = [r for r in unmatched_b if r.kind == kind] + [tb[p.b_index] for p in suspects]
    order_a = _positions(records_a)
    order_b = _positions(records_b)
    candidates = [(ra, rb) for ra in records_a for rb in records_b
                  if (ra.index in pool_a or rb.index in pool_b or _both_unmatched_ok(ra, rb))
                  and _plausible(ra, rb, order_a, order_b)
                  and getattr(pool_a.get(ra.index), "b_index", None) != rb.index]
    if len(candidates) > MAX_TRIALS:
        return pairs, unmatched_a, unmatched_b
    trials = []
    for ra, rb in candidates:
        trial = compare(ra, rb)
        if trial.status in ("ok", "layout"):
            trials.append((trial.rel_l2 or 0.0, ra.index, rb.index, trial))
    chosen = _unambiguous(trials)
    if not chosen:
        return pairs, unmatched_a, unmatched_b
    taken_a = {t.a_index for t in chosen}
    taken_b = {t.b_index for t in chosen}
    kept, freed = [], []
    for p in pairs:
        if p.kind == kind and (p.a_index in taken_a or p.b_index in taken_b) and _suspect(p):
            freed.append(p)
        else:
            kept.append(p)
    for trial in chosen:
        trial.match, trial.confidence = "values", 1.0
    new_pairs = sorted(kept + chosen, key=lambda p: p.b_index)
    left_a = [r for r in unmatched_a if r.index not in taken_a] + [
        ta[p.a_index] for p in freed if p.a_index not in taken_a]
    left_b = [r for r in unmatched_b if r.index not in taken_b] + [
        tb[p.b_index] for p in freed if p.b_index not in taken_b]
    return (new_pairs, sorted(left_a, key=lambda r: r.index),
            sorted(left_b, key=lambda r: r.index))


def _positions(records):
    return {r.index: i for i, r in enumerate(sorted(records, key=lambda r: r.index))}


def _plausible(ra, rb, order_a, order_b) -> bool:
    if ra.position != rb.position or ra.numel != rb.numel or ra.numel == 0 or not _norms_agree(ra, rb):
        return False
    if ra.kind in ("param", "param_grad"):
        role_a, role_b = ra.meta.get("role"), rb.meta.get("role")
        return not (role_a and role_b and role_a != role_b)
    if abs(order_a[ra.index] - order_b[rb.index]) > WINDOW:
        return False
    fa, fb = family(ra.meta.get("op_type")), family(rb.meta.get("op_type"))
    return not (fa and fb and fa != fb)


def _norms_agree(ra, rb) -> bool:
    """The recorded L2 norms (no tensor read) of two records whose values could agree."""
    try:
        la, lb = float(ra.stats["l2"]), float(rb.stats["l2"])
    except (KeyError, TypeError, ValueError):
        return True
    return abs(la - lb) <= NORM_SLACK * max(abs(la), abs(lb)) + 1e-12


def _both_unmatched_ok(ra, rb) -> bool:
    """Two records the alignment left out may pair by values where a crossing displaced them:
    parameters of the same role, activations of the same known op family (the Add layer a
    converter records and torch does not stays out)."""
    if ra.kind in ("param", "param_grad"):
        return True
    fa, fb = family(ra.meta.get("op_type")), family(rb.meta.get("op_type"))
    return bool(fa) and fa == fb


def _unambiguous(trials) -> list:
    """The best pairing of each record, best first, where no other candidate of that record
    agrees about as well (equal values say nothing about which record is which)."""
    trials.sort(key=lambda t: t[0])
    by_a, by_b = {}, {}
    for rel, ia, ib, _ in trials:
        by_a.setdefault(ia, []).append(rel)
        by_b.setdefault(ib, []).append(rel)
    chosen, used_a, used_b = [], set(), set()
    for rel, ia, ib, trial in trials:
        if ia in used_a or ib in used_b:
            continue
        if _tied(by_a[ia], rel) or _tied(by_b[ib], rel):
            continue
        chosen.append(trial)
        used_a.add(ia)
        used_b.add(ib)
    return chosen


def _tied(errors, best) -> bool:
    """Another candidate within 2x of the best (or both exact): the values cannot choose."""
    others = sorted(errors)[1:]
    return bool(others) and others[0] <= max(2.0 * best, 1e-12)
