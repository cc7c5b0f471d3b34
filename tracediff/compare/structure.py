"""Structural alignment: an order-preserving sequence alignment of forward records that no name
matched, scored on op family, shape (up to a permutation of axes) and value statistics.

Up to DP_LIMIT records a side: a banded Needleman-Wunsch (the band follows the diagonal, wide
enough for the length difference plus slack; each row is vectorised NumPy, the left-gap
recurrence a running maximum). Longer sequences: a greedy walk along the diagonal that, where
records stop matching, looks ahead for the nearest point where a run of good matches resumes,
so two 10,000-record traces align in a fraction of a second.
"""
from __future__ import annotations

import math

import numpy as np

from .families import WILDCARDS, family

MATCH_OFFSET = 0.5      # a pair scores similarity - 0.5 ...
GAP = -0.2              # ... a skipped record -0.2: pairs below similarity 0.1 lose to two gaps
ACCEPT = 0.5            # aligned pairs below this similarity are reported unmatched
GOOD = 0.65             # similarity of records that surely correspond (family, shape or values agree)
BAND_SLACK = 64
DP_LIMIT = 1500         # records per side above which the greedy walk replaces the DP
LOOKAHEAD = 32          # records the greedy walk looks ahead on each side
CONFIRM = 3             # good matches in a row that confirm a resynchronisation


class Features:
    """Per-record vectors the similarity is computed from."""

    def __init__(self, records, families: dict):
        fams = [family(r.meta.get("op_type")) for r in records]
        self.family = np.array([families.setdefault(f, len(families)) if f and f not in WILDCARDS else -1
                                for f in fams], np.int64).reshape(-1)
        self.shape = np.array([hash(r.shape) for r in records], np.int64).reshape(-1)
        self.sorted_shape = np.array([hash(tuple(sorted(d for d in r.shape if d != 1))) for r in records],
                                     np.int64).reshape(-1)
        self.numel = np.array([r.numel for r in records], np.int64).reshape(-1)
        stats = np.array([[_number(r.stats.get(k)) for k in ("mean", "std", "min", "max", "zero_frac")]
                          for r in records], np.float64).reshape(-1, 5)
        stats = np.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0)
        self.values = stats[:, :4]
        self.zero = stats[:, 4]


def _number(value) -> float:
    return value if isinstance(value, float) else (float(value) if isinstance(value, int) else math.nan)


def similarity(fa: Features, i, fb: Features, j) -> np.ndarray:
    """Similarity in [0, 1] of record i of a with records j of b (j an index array): 0.35 for
    the same op family (0.175 when either is unknown), 0.3 for the same shape (0.25 up to a
    permutation, 0.15 for the same size), 0.35 scaled by how close the value statistics are."""
    return similarity_pairs(fa, np.full(len(j), i), fb, np.asarray(j))


def align(records_a, records_b):
    """Order-preserving pairs ``[(i, j, similarity)]`` between two lists of forward records."""
    n, m = len(records_a), len(records_b)
    if n == 0 or m == 0:
        return []
    families = {}
    fa, fb = Features(records_a, families), Features(records_b, families)
    if n == m:
        diag = similarity_pairs(fa, np.arange(n), fb, np.arange(n))
        if (diag >= ACCEPT + 0.15).all():
            return [(i, i, float(diag[i])) for i in range(n)]
    if n <= DP_LIMIT and m <= DP_LIMIT:
        return _banded(fa, fb, n, m)
    return _greedy(fa, fb, n, m)


def _run_is_good(fa, fb, i, j, n, m, length=CONFIRM) -> bool:
    k = min(length, n - i, m - j)
    if k <= 0:
        return True
    sims = similarity_pairs(fa, np.arange(i, i + k), fb, np.arange(j, j + k))
    return bool((sims >= GOOD).all())


def similarity_pairs(fa, i, fb, j) -> np.ndarray:
    """Similarity of records i[k] of a with j[k] of b, for index arrays of equal length."""
    fam_a, fam_b = fa.family[i], fb.family[j]
    known = (fam_a >= 0) & (fam_b >= 0)
    fam = np.where(known, np.where(fam_a == fam_b, 0.35, 0.0), 0.175)
    shape = np.where(fa.shape[i] == fb.shape[j], 0.3,
                     np.where(fa.sorted_shape[i] == fb.sorted_shape[j], 0.25,
                              np.where(fa.numel[i] == fb.numel[j], 0.15, 0.0)))
    va, vb = fa.values[i], fb.values[j]
    rel = np.abs(va - vb) / (np.abs(va) + np.abs(vb) + 1e-12)
    rel = np.concatenate([rel, np.abs(fa.zero[i] - fb.zero[j])[:, None]], axis=1)
    # sizes that no layout reconciles never pair: such records stay unmatched and listed
    return np.where(fa.numel[i] == fb.numel[j], fam + shape + 0.35 * (1.0 - rel.mean(axis=1)), 0.0)


def _greedy(fa, fb, n, m):
    """Walk the diagonal; where it stops matching, jump to the nearest resynchronisation."""
    pairs = []
    i = j = 0
    # similarities along the running diagonal are computed in blocks
    while i < n and j < m:
        k = min(256, n - i, m - j)
        sims = similarity_pairs(fa, np.arange(i, i + k), fb, np.arange(j, j + k))
        good = sims >= GOOD
        run = int(np.argmin(good)) if not good.all() else k
        pairs.extend((i + t, j + t, float(sims[t])) for t in range(run))
        i, j = i + run, j + run
        if run == k:
            continue
        s = float(sims[run])
        if s >= ACCEPT and _run_is_good(fa, fb, i + 1, j + 1, n, m):
            pairs.append((i, j, s))        # a record whose values changed, in place
            i, j = i + 1, j + 1
            continue
        best = None
        for di in range(min(LOOKAHEAD, n - i)):
            cols = np.arange(j, min(m, j + LOOKAHEAD))
            row = similarity(fa, i + di, fb, cols)
            for dj in np.flatnonzero(row >= GOOD):
                cost = di + int(dj)
                if cost == 0 or (best is not None and cost >= best[0]):
                    continue
                if _run_is_good(fa, fb, i + di + 1, j + int(dj) + 1, n, m):
                    best = (cost, i + di, j + int(dj))
        if best is not None:
            i, j = best[1], best[2]
            continue
        if s >= ACCEPT:
            pairs.append((i, j, s))
        i, j = i + 1, j + 1
    return pairs


def _banded(fa, fb, n, m):
    width = abs(n - m) + BAND_SLACK
    neg = -1e18
    prev = np.full(m + 1, neg)
    prev[0] = 0.0
    prev[1:min(m, width) + 1] = GAP * np.arange(1, min(m, width) + 1)
    moves = []          # per row: (lo, move codes for columns lo..hi) 0 diag, 1 up, 2 left
    sims = []
    for i in range(1, n + 1):
        center = int(round(i * m / n))
        lo, hi = max(1, center - width), min(m, center + width)
        cur = np.full(m + 1, neg)
        cur[0] = GAP * i if i <= width else neg
        if lo > hi:
            moves.append((lo, np.zeros(0, np.int8)))
            sims.append(np.zeros(0))
            prev = cur
            continue
        cols = np.arange(lo, hi + 1)
        sim = similarity(fa, i - 1, fb, cols - 1)
        diag = prev[cols - 1] + (sim - MATCH_OFFSET)
        up = prev[cols] + GAP
        best = np.maximum(diag, up)
        code = np.where(diag >= up, 0, 1).astype(np.int8)
        # left gaps: H[j] = max_k<=j (T[k] + GAP*(j-k)), seeded with H[lo-1]
        seed = cur[lo - 1]
        t = np.concatenate([[seed], best])
        offsets = GAP * np.arange(t.size)
        run = np.maximum.accumulate(t - offsets) + offsets
        h = run[1:]
        code = np.where(h > best + 1e-12, 2, code).astype(np.int8)
        cur[lo:hi + 1] = h
        moves.append((lo, code))
        sims.append(sim)
        prev = cur
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        lo, code = moves[i - 1]
        k = j - lo
        move = int(code[k]) if 0 <= k < code.size else 1   # outside the band: never on the path
        if move == 0:
            sim = float(sims[i - 1][k])
            if sim >= ACCEPT:
                pairs.append((i - 1, j - 1, sim))
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    pairs.reverse()
    return pairs
