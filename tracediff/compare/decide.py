"""Decide among candidate layouts by the values: the candidate with the smallest error, with a
clear margin over the runner-up. Where several reproduce the values equally (a constant,
zero-initialised or symmetric tensor), prefer identity, then the layout both records declare;
what is left is resolved after the whole diff by the permutation of the producing pair."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dtypes import as_float
from .layout import declared_equivalent, probe_indices

PROBE = 256            # elements each candidate is first scored on (the margin is judged there)
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
    mapped: object = field(default=None, repr=False)   # a rearranged by ``chosen``, when kept

    def apply(self, a):
        return self.mapped if self.mapped is not None else self.chosen.apply(a)
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
    # in full, only candidates that reproduce the sampled elements (a tie: all of them, up to
    # MAX_TIED): a diverged tensor costs one rearranged copy, not one per candidate
    probe_b = fb[probe]
    hopeful = [k for _, k in scores if close(fa[candidates[k].map_flat(probe)], probe_b)][:MAX_TIED]
    full, kept = [], (None, None)     # the best rearranged copy is kept for the caller
    for k in hopeful:
        mapped = candidates[k].apply(a)
        if close(mapped, b):
            # one hopeful candidate needs no error to rank it (the float64 copies cost time)
            full.append((_rms(_wide(mapped) - _wide(b)) if len(hopeful) > 1 else 0.0, k))
            if kept[0] is None or full[-1][0] < kept[0]:
                kept = (full[-1][0], (k, mapped))
        del mapped
    if full:
        full.sort()
        best = full[0][0]
        tied = [candidates[k] for err, k in full if err <= TIE * best + 1e-300]
        chosen, reason = _break_tie(tied, b.size, layout_a, layout_b)
        k_kept, mapped = kept[1]
        return Decision(chosen, True, next(e for e, k in full if candidates[k] is chosen),
                        tied=[c for c in tied if c is not chosen], reason=reason,
                        mapped=mapped if candidates[k_kept] is chosen else None)
    runner = scores[1][0] if len(scores) > 1 else None
    if runner is None or runner > MARGIN * best_probe:
        return Decision(candidates[scores[0][1]], False, best_probe)
    # no candidate stands out: show the values through the declared layout, else the closest
    near = [candidates[k] for err, k in scores if err <= MARGIN * best_probe]
    chosen = next((c for c in near if declared_equivalent(c, layout_a, layout_b)), candidates[scores[0][1]])
    return Decision(chosen, False, best_probe, clear=False)


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
