"""Decide among candidate layouts by the values: the candidate with the smallest error, with a
clear margin over the runner-up. Where several reproduce the values equally (a constant,
zero-initialised or symmetric tensor), prefer identity, then the layout both records declare;
what is left is resolved after the whole diff by the permutation of the producing pair."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dtypes import as_float
from .layout import declared_equivalent, probe_indices

PROBE = 256            # elements each candidate is first scored on
CONFIRM = 8            # best-scoring candidates compared on every element
MARGIN = 4.0           # the runner-up's error must exceed the best's this many times
TIE = 2.0              # passing candidates within this factor of the best are a tie
MAX_TIED = 24          # tied candidates compared in full, at most (a constant tensor ties them all)


@dataclass
class Decision:
    chosen: object = None        # the Rearrangement, or None where the values pick none
    passed: bool = False         # the chosen candidate reproduces the values within tolerance
    error: float | None = None   # its RMS error
    tied: list = field(default_factory=list)   # the others reproducing the values as well
    clear: bool = True           # (not passed) the runner-up is clearly worse than the chosen
    reason: str = ""             # how a tie was broken: identity, declared


def decide(a: np.ndarray, b: np.ndarray, candidates, close, layout_a=None, layout_b=None) -> Decision:
    """``close(x, y) -> bool`` is the pair's tolerance rule."""
    if not candidates:
        return Decision()
    fa, fb = a.reshape(-1), b.reshape(-1)
    probe = probe_indices(b.size, PROBE)
    ref = _wide(fb[probe])
    scores = []
    for k, cand in enumerate(candidates):
        scores.append((_rms(_wide(fa[cand.map_flat(probe)]) - ref), k))
    scores.sort()
    best_probe = scores[0][0]
    # every candidate as good as the best on the probe (a tie), else the few best
    short = [k for s, k in scores if s <= TIE * best_probe + 1e-300][:MAX_TIED]
    short = short if len(short) > CONFIRM else [k for _, k in scores[:CONFIRM]]
    full = []
    for k in short:
        mapped = candidates[k].apply(a)
        err = _rms(_wide(mapped) - _wide(b))
        full.append((err, k, bool(close(mapped, b))))
        del mapped
    full.sort(key=lambda t: (t[0], t[1]))
    passing = [(err, k) for err, k, ok in full if ok]
    if passing:
        best = passing[0][0]
        tied = [candidates[k] for err, k in passing if err <= TIE * best + 1e-300]
        chosen, reason = _break_tie(tied, b.size, layout_a, layout_b)
        return Decision(chosen, True, next(e for e, k in passing if candidates[k] is chosen),
                        tied=[c for c in tied if c is not chosen], reason=reason)
    best_err, best_k, _ = full[0]
    runner = full[1][0] if len(full) > 1 else None
    if runner is None or runner > MARGIN * best_err:
        return Decision(candidates[best_k], False, best_err)
    # no candidate stands out: show the values through the declared layout, else the closest
    near = [candidates[k] for err, k, _ in full if err <= MARGIN * best_err]
    chosen = next((c for c in near if declared_equivalent(c, layout_a, layout_b)), candidates[best_k])
    return Decision(chosen, False, best_err, clear=False)


def _break_tie(tied, numel, layout_a, layout_b):
    if len(tied) == 1:
        return tied[0], ""
    for cand in tied:
        if cand.is_identity(numel):
            return cand, "identity"
    for cand in tied:
        if declared_equivalent(cand, layout_a, layout_b):
            return cand, "declared"
    return tied[0], ""


def _wide(x):
    x = np.asarray(as_float(x))
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _rms(diff) -> float:
    if not diff.size:
        return 0.0
    value = float(np.sqrt(np.mean(np.abs(diff) ** 2)))
    return value if np.isfinite(value) else float("inf")
