"""Axis layouts: the candidate rearrangements (whole-axis permutations, un-flattenings along
declared shapes) that may map a candidate tensor onto the reference, and descriptions of shapes
in the trace's named dims. Which candidate holds is decided by the values (``decide.py``).

Axes are identified by position, never by size: a square image's height and width, or a 3x3
kernel's spatial axes, are two candidates each, and the values tell them apart.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..primes import render_shape, symbol

LAYOUT_LETTERS = {"batch": "N", "channels": "C", "channel": "C", "height": "H", "width": "W",
                  "depth": "D", "length": "L", "seq": "L", "time": "L"}
MAX_CANDIDATES = 720              # 6!: every permutation of a rank-6 tensor's axes
MAX_SPLIT = 4                     # atoms an axis is un-flattened into, at most


@dataclass
class Rearrangement:
    """``b == a.reshape(a_atoms).transpose(perm).reshape(b_shape)``."""

    a_atoms: tuple
    perm: tuple
    b_atoms: tuple
    b_shape: tuple
    flatten: bool                 # an axis was split into several (a flatten/reshape was followed)
    a_axis: tuple = ()            # the axis of a each atom of a_atoms comes from
    b_axis: tuple = ()            # the axis of b each atom of b_atoms goes to

    def apply(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(self.a_atoms).transpose(self.perm)).reshape(self.b_shape)

    def invert(self, b: np.ndarray, shape_a) -> np.ndarray:
        """The inverse of ``apply``: ``b`` in a's layout, shaped ``shape_a`` (replay feeds a
        candidate layer the reference's values this way)."""
        atoms = np.ascontiguousarray(b.reshape(self.b_atoms).transpose(np.argsort(self.perm)))
        return atoms.reshape(tuple(shape_a))

    def map_flat(self, b_flat: np.ndarray) -> np.ndarray:
        """Flat indices into a of the elements at flat indices ``b_flat`` of b."""
        coords_b = np.unravel_index(b_flat, self.b_atoms) if self.b_atoms else ()
        coords_a = [None] * len(self.a_atoms)
        for i, axis in enumerate(self.perm):
            coords_a[axis] = coords_b[i]
        if not coords_a:
            return np.zeros_like(b_flat)
        return np.ravel_multi_index(coords_a, self.a_atoms)

    def is_identity(self, numel: int) -> bool:
        probe = _probe_indices(numel)
        return bool(np.array_equal(self.map_flat(probe), probe))


class Dims(dict):
    """A trace's named dims, plus ``factorisations``: the merged axes its flattens declare."""

    def __init__(self, dims, factorisations=()):
        super().__init__(dims or {})
        self.factorisations = tuple(factorisations)


@dataclass
class Search:
    """The candidates of one pair; ``bounded`` when MAX_CANDIDATES stopped the enumeration."""

    candidates: list = field(default_factory=list)
    bounded: bool = False


def shape_text(shape, dims) -> str:
    return render_shape(shape, dims)


def layout_code(shape, dims, declared=None) -> str:
    """``NHWC`` from a declared meta layout, or from dims named batch/height/width/channels."""
    if isinstance(declared, str) and len(declared) == len(shape):
        return declared
    if not dims:
        return ""
    letters = []
    for size in shape:
        name = symbol(size, dims)
        letter = LAYOUT_LETTERS.get(name)
        if letter is None:
            return ""
        letters.append(letter)
    return "".join(letters) if len(set(letters)) == len(letters) else ""


def axis_permutation(shape_a, shape_b):
    """The permutation p with ``a.transpose(p).shape == b.shape`` when the sizes > 1 are
    pairwise distinct (the only one); None otherwise."""
    if sorted(shape_a) != sorted(shape_b):
        return None
    if any(s > 1 and list(shape_b).count(s) > 1 for s in shape_b):
        return None
    free = {}
    for axis, size in enumerate(shape_a):
        free.setdefault(size, []).append(axis)
    return tuple(free[size].pop(0) for size in shape_b)


def plain(shape_a, shape_b, perm) -> Rearrangement:
    """The whole-axis permutation ``perm`` as a Rearrangement: ``b = a.transpose(perm)``."""
    return Rearrangement(tuple(shape_a), tuple(perm), tuple(shape_b), tuple(shape_b), False,
                         tuple(range(len(shape_a))), tuple(range(len(shape_b))))


def squeezed(shape) -> tuple:
    return tuple(int(s) for s in shape if s != 1)


# -- candidates ---------------------------------------------------------------------------------

def refine(shape, declared):
    """The atoms of each axis of ``shape`` when ``declared`` (an un-flattened shape) refines it:
    every axis the product of consecutive declared axes; None otherwise."""
    if declared is None:
        return None
    try:
        atoms = [int(x) for x in declared if int(x) > 1]
    except (TypeError, ValueError):
        return None
    out, k = [], 0
    for size in shape:
        group, product = [], 1
        while product < size and k < len(atoms):
            product *= atoms[k]
            group.append(atoms[k])
            k += 1
        if product != size and size > 1:
            return None
        out.append(group if size > 1 else [])
    return out if k == len(atoms) and math.prod(atoms) == math.prod(shape) else None


def declared_factorisations(shape, declared) -> list:
    """The merged axes of a declared un-flattening (``N(HWC)`` of a flatten: ``(H, W, C)``)."""
    groups = refine(shape, declared)
    return [tuple(g) for g in groups or () if len(g) > 1]


def candidates(shape_a, shape_b, dims=None, *, declared_a=None, declared_b=None,
               factorisations=()) -> Search:
    """Every rearrangement of whole axes mapping a's shape onto b's: size-consistent
    permutations, through un-flattenings along declared shapes (each record's meta
    ``unflattened_shape``; ``factorisations``, the merged axes that flattens of either trace
    declare; the other side's axes; named dims; distinct prime factors). Axes of equal size
    give one candidate per assignment: the values decide among them."""
    if math.prod(shape_a) != math.prod(shape_b):
        return Search()
    search, seen = Search(), set()
    probe = _probe_indices(math.prod(shape_b), 512)
    groups_a, fixed_a = _groups(shape_a, declared_a)
    groups_b, fixed_b = _groups(shape_b, declared_b)
    if _reconcile(groups_a, fixed_a, groups_b, fixed_b, dims, factorisations):
        _enumerate(search, seen, probe, shape_b, groups_a, fixed_a, groups_b, fixed_b)
    # then through a flatten: every merged axis un-flattened along what is declared
    split_a = _split_all(groups_a, fixed_a, dims, factorisations)
    split_b = _split_all(groups_b, fixed_b, dims, factorisations)
    if split_a or split_b:
        ga, fa = split_a or (groups_a, fixed_a)
        gb, fb = split_b or (groups_b, fixed_b)
        if Counter(x for g in ga for x in g) == Counter(x for g in gb for x in g):
            _enumerate(search, seen, probe, shape_b, ga, fa, gb, fb)
    return search


def _split_all(groups, fixed, dims, factorisations):
    """Every single-atom axis that declared flattens or named dims can un-flatten, split;
    None when none can."""
    out, flags, changed = [list(g) for g in groups], list(fixed), False
    for axis, group in enumerate(out):
        if len(group) == 1:
            split = _split(group[0], Counter(), dims, factorisations, primes=False)
            if split:
                out[axis], flags[axis], changed = list(split), False, True
    return (out, flags) if changed else None


def _enumerate(search, seen, probe, shape_b, groups_a, fixed_a, groups_b, fixed_b):
    if search.bounded:
        return
    axis_a = tuple(axis for axis, g in enumerate(groups_a) for _ in g)
    axis_b = tuple(axis for axis, g in enumerate(groups_b) for _ in g)
    flatten = any(len(g) > 1 for g in groups_a + groups_b)
    for order_a in itertools.product(*_orders(groups_a, fixed_a)):
        seq_a = tuple(x for g in order_a for x in g)
        for order_b in itertools.product(*_orders(groups_b, fixed_b)):
            seq_b = tuple(x for g in order_b for x in g)
            for perm in _assignments(seq_a, seq_b):
                cand = Rearrangement(seq_a, perm, seq_b, tuple(shape_b), flatten, axis_a, axis_b)
                key = cand.map_flat(probe).tobytes()
                if key in seen:
                    continue
                seen.add(key)
                search.candidates.append(cand)
                if len(search.candidates) >= MAX_CANDIDATES:
                    search.bounded = True
                    return


def _groups(shape, declared):
    refined = refine(shape, declared)
    if refined is not None:
        return refined, [True] * len(shape)
    return [[int(s)] if s > 1 else [] for s in shape], [True] * len(shape)


def _reconcile(groups_a, fixed_a, groups_b, fixed_b, dims, factorisations) -> bool:
    """Split single-atom axes until both sides hold the same atoms."""
    for _ in range(2 * MAX_SPLIT):
        atoms_a = Counter(x for g in groups_a for x in g)
        atoms_b = Counter(x for g in groups_b for x in g)
        if atoms_a == atoms_b:
            return True
        changed = False
        for groups, fixed, own, other in ((groups_a, fixed_a, atoms_a, atoms_b),
                                          (groups_b, fixed_b, atoms_b, atoms_a)):
            excess_own, excess_other = own - other, other - own
            for axis, group in enumerate(groups):
                if len(group) != 1 or excess_own[group[0]] <= 0:
                    continue
                split = _split(group[0], excess_other, dims, factorisations)
                if split:
                    excess_own[group[0]] -= 1
                    groups[axis] = list(split)
                    fixed[axis] = False
                    changed = True
                    break
        if not changed:
            return False
    return False


def _split(size, other: Counter, dims, factorisations, primes=True):
    """Atoms to un-flatten an axis of ``size`` into: the other side's axes first, then declared
    flattens, named dims, distinct primes. Never arbitrary prime atoms (64 is not six 2s)."""
    pool = sorted(other.elements())
    for r in range(2, MAX_SPLIT + 1):
        for combo in itertools.combinations(pool, r):
            if math.prod(combo) == size:
                return combo
    for group in factorisations:
        if math.prod(group) == size:
            return tuple(group)
    named = sorted(int(v) for v in (dims or {}).values() if int(v) > 1)
    for r in range(2, MAX_SPLIT + 1):
        for combo in itertools.combinations(named, r):
            if math.prod(combo) == size:
                return combo
    factors = _prime_factors(size) if primes else []
    if len(factors) > 1 and len(set(factors)) == len(factors):
        return tuple(factors)   # only where nothing else reconciles the sizes, and never 2*2*...
    return None


def _prime_factors(n: int) -> list:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def _orders(groups, fixed):
    """The orders of the atoms inside each axis: a declared or single-atom axis has one."""
    out = []
    for group, is_fixed in zip(groups, fixed):
        if is_fixed or len(group) <= 1:
            out.append([tuple(group)])
        else:
            out.append(sorted(set(itertools.permutations(group))))
    return out


def _assignments(seq_a, seq_b):
    """Every perm with ``seq_a[perm[i]] == seq_b[i]``: equal sizes in every assignment."""
    where = {}
    for i, size in enumerate(seq_a):
        where.setdefault(size, []).append(i)
    slots = {}
    for j, size in enumerate(seq_b):
        slots.setdefault(size, []).append(j)
    sizes = sorted(slots)
    choices = [list(itertools.permutations(where[s])) for s in sizes]
    for combo in itertools.product(*choices):
        perm = [0] * len(seq_b)
        for size, chosen in zip(sizes, combo):
            for j, i in zip(slots[size], chosen):
                perm[j] = i
        yield tuple(perm)


def _probe_indices(numel: int, count: int = 64) -> np.ndarray:
    if numel <= count:
        return np.arange(numel, dtype=np.int64)
    rng = np.random.default_rng(numel)
    return np.unique(np.concatenate([[0, numel - 1], rng.choice(numel, count - 2, replace=False)])).astype(np.int64)


def probe_indices(numel: int, count: int = 64) -> np.ndarray:
    return _probe_indices(numel, count)


# -- descriptions -------------------------------------------------------------------------------

def describe_perm(perm) -> str:
    moved = [i for i, p in enumerate(perm) if p != i]
    if len(moved) == 2 and perm[moved[0]] == moved[1]:
        return f"axes {moved[0]} and {moved[1]} swapped"
    return f"axes permuted by {tuple(int(p) for p in perm)}"


def describe_match(r: Rearrangement, shape_a, dims, layout_a=None, layout_b=None) -> str:
    """The hint of a ``layout`` pair."""
    b_shape = r.b_shape
    if not r.flatten:
        code_a, code_b = layout_code(shape_a, dims, layout_a), layout_code(b_shape, dims, layout_b)
        text_a = shape_text(shape_a, dims) + (f" ({code_a})" if code_a else "")
        text_b = shape_text(b_shape, dims) + (f" ({code_b})" if code_b else "")
        return (f"a is {text_a}, b is {text_b}: values match after permuting axes "
                f"{whole_axis_perm(r)}")
    atoms_a = "[" + ", ".join(symbol(s, dims) if dims else str(s) for s in r.a_atoms) + "]"
    atoms_b = "[" + ", ".join(symbol(s, dims) if dims else str(s) for s in r.b_atoms) + "]"
    return (f"a is {shape_text(shape_a, dims)} flattened from {atoms_a}, b is "
            f"{shape_text(b_shape, dims)} flattened from {atoms_b}: values match after "
            f"un-flattening a and permuting axes {tuple(int(p) for p in r.perm)} "
            "(a flatten/reshape in a different axis order)")


def whole_axis_perm(r: Rearrangement) -> tuple:
    """The permutation in terms of a's and b's own axes, unit axes included, when no axis was
    split and both have the same rank (``a.transpose(p)`` has b's shape); else the atoms'."""
    rank = len(r.b_shape)
    if r.flatten or not r.a_axis and r.a_atoms:
        return tuple(int(p) for p in r.perm)
    units_a = [axis for axis in range(rank) if axis not in r.a_axis]
    units_b = [axis for axis in range(rank) if axis not in r.b_axis]
    if len(units_a) != len(units_b) or (r.a_axis and max(r.a_axis) >= rank):
        return tuple(int(p) for p in r.perm)
    out = dict(zip(units_b, units_a))
    for i, p in enumerate(r.perm):
        out[r.b_axis[i]] = r.a_axis[p]
    return tuple(int(out[axis]) for axis in range(rank))


def describe_mismatch(shape_a, shape_b, dims) -> str:
    """Why two shapes differ, in the trace's named dims."""
    head = f"a is {shape_text(shape_a, dims)}, b is {shape_text(shape_b, dims)}"
    if sorted(shape_a) == sorted(shape_b):
        perm = axis_permutation(shape_a, shape_b)
        return f"{head}: {describe_perm(perm)}" if perm is not None else \
            f"{head}: the same axis sizes in another order"
    if math.prod(shape_a) == math.prod(shape_b):
        return f"{head}: same number of elements, arranged differently (a reshape or flatten)"
    if len(shape_a) == len(shape_b):
        diffs = [f"axis {i}: {symbol(x, dims) if dims else x}={x} vs {symbol(y, dims) if dims else y}={y}"
                 for i, (x, y) in enumerate(zip(shape_a, shape_b)) if x != y]
        return f"{head}: different sizes ({'; '.join(diffs)})"
    return f"{head}: different ranks ({len(shape_a)} vs {len(shape_b)} axes)"


# -- declared layouts ---------------------------------------------------------------------------

def declared_equivalent(r: Rearrangement, layout_a, layout_b) -> bool:
    """Both records declare a layout and the permutation maps one onto the other (NHWC->NCHW)."""
    if not both_declared(r, layout_a, layout_b):
        return False
    return all(layout_b[r.b_axis[i]] == layout_a[r.a_axis[p]] for i, p in enumerate(r.perm))


def both_declared(r: Rearrangement, layout_a, layout_b) -> bool:
    """Both records declare a plain layout covering their axes (no flatten)."""
    if r.flatten or not isinstance(layout_a, str) or not isinstance(layout_b, str):
        return False
    if "(" in layout_a + layout_b or not r.a_axis or not r.b_axis:
        return False
    return len(layout_a) > max(r.a_axis) and len(layout_b) > max(r.b_axis) and \
        len(layout_b) == len(r.b_shape)


def signature(r: Rearrangement) -> tuple:
    """The atoms on each side, labelled ``(size, occurrence in a's order)`` so that equal sizes
    (a square image's H and W) stay apart; unit atoms left out."""
    seen = Counter()
    labels = []
    for size in r.a_atoms:
        labels.append((size, seen[size]))
        seen[size] += 1
    a_seq = tuple(label for label in labels if label[0] > 1)
    b_seq = tuple(labels[p] for p in r.perm if labels[p][0] > 1)
    return a_seq, b_seq


def consistent(r: Rearrangement, accepted: tuple, layout_a=None, layout_b=None) -> bool:
    """Does ``r`` rearrange axes the way an accepted (declared) layout mapping does?

    Either ``r`` permutes axes by the same positions (the model input: its own channel count
    in the conv's place), or the atoms ``r`` shares with the accepted mapping (at least two)
    are in the same order on each side as there (NHWC -> NCHW, then a flatten of it, then a
    Dense kernel's input axis). The other atoms must stay in place around them, unless both
    records declare layouts whose letters follow every atom (a kernel's IO against OI).
    """
    a_seq, b_seq = signature(r)
    acc_a, acc_b = accepted
    if len(a_seq) == len(acc_a) and _positions(a_seq, b_seq) == _positions(acc_a, acc_b):
        return True      # the same axis permutation (the input's channels instead of the conv's)
    common = set(a_seq) & set(acc_a)
    if len(common) < 2:
        return False
    if [x for x in a_seq if x in common] != [x for x in acc_a if x in common]:
        return False
    if [x for x in b_seq if x in common] != [x for x in acc_b if x in common]:
        return False
    if common == set(a_seq):
        return True
    if _letters_follow(r, layout_a, layout_b):
        return True
    return _collapse(a_seq, common) == _collapse(b_seq, common)


def _positions(a_seq, b_seq) -> tuple:
    where = {label: i for i, label in enumerate(a_seq)}
    return tuple(where.get(label, -1) for label in b_seq)


def _collapse(seq, common) -> list:
    """``seq`` with each run of shared atoms replaced by one marker."""
    out = []
    for x in seq:
        if x in common:
            if not out or out[-1] != "*":
                out.append("*")
        else:
            out.append(x)
    return out


def _letters_follow(r: Rearrangement, layout_a, layout_b) -> bool:
    if not (isinstance(layout_a, str) and isinstance(layout_b, str)) or not r.a_axis or not r.b_axis:
        return False
    if len(layout_a) <= max(r.a_axis) or len(layout_b) <= max(r.b_axis):
        return False
    for i, p in enumerate(r.perm):
        if r.b_atoms[i] > 1 and layout_b[r.b_axis[i]] != layout_a[r.a_axis[p]]:
            return False
    return True
