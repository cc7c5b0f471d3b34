"""Axis layouts: find the rearrangement (axis permutation, possibly through a flatten) that maps
a candidate tensor onto the reference, and describe shapes with the trace's named dims.

With pairwise distinct axis sizes (the prime-sized dims tracediff encourages) the permutation
between two shapes is unique; where sizes repeat we refuse to guess and name the colliding dims.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..primes import render_shape, symbol

LAYOUT_LETTERS = {"batch": "N", "channels": "C", "channel": "C", "height": "H", "width": "W",
                  "depth": "D", "length": "L", "seq": "L", "time": "L"}
MAX_CANDIDATES = 2000


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


@dataclass
class Ambiguity:
    """Sizes repeat: the permutation cannot be identified."""

    sizes: tuple


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
    """The permutation p with ``a.transpose(p).shape == b.shape``; an Ambiguity when sizes > 1
    repeat; None when the shapes are not permutations of each other."""
    if sorted(shape_a) != sorted(shape_b):
        return None
    repeated = sorted({s for s in shape_b if s > 1 and list(shape_b).count(s) > 1})
    if repeated:
        return Ambiguity(tuple(repeated))
    free = {}
    for axis, size in enumerate(shape_a):
        free.setdefault(size, []).append(axis)
    return tuple(free[size].pop(0) for size in shape_b)


def plain(shape_a, shape_b, perm) -> Rearrangement:
    return Rearrangement(tuple(shape_a), tuple(perm), tuple(shape_b), tuple(shape_b), False,
                         tuple(range(len(shape_a))), tuple(range(len(shape_b))))


def factor(size: int, dims: dict) -> list:
    """Split an axis size into atoms: a named dim stays whole; otherwise a product of distinct
    named dims, else its prime factors."""
    if size <= 1:
        return []
    named = sorted({int(v) for v in (dims or {}).values() if int(v) > 1})
    if size in named:
        return [size]
    for r in (2, 3, 4):
        for combo in itertools.combinations(named, r):
            if math.prod(combo) == size:
                return list(combo)
    out, n, p = [], size, 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def candidates(shape_a, shape_b, dims):
    """Every rearrangement that un-flattens axes into atoms (in any order within each axis) and
    permutes them; an Ambiguity when atoms repeat; [] when the sizes cannot correspond."""
    if math.prod(shape_a) != math.prod(shape_b):
        return []
    atoms_a = [factor(s, dims) for s in shape_a]
    atoms_b = [factor(s, dims) for s in shape_b]
    flat_a = sorted(x for group in atoms_a for x in group)
    if flat_a != sorted(x for group in atoms_b for x in group):
        return []
    repeated = sorted({x for x in flat_a if flat_a.count(x) > 1})
    if repeated:
        return Ambiguity(tuple(repeated))
    orders_a = itertools.product(*[itertools.permutations(g) for g in atoms_a])
    out = []
    b_orders = [list(itertools.product(*[itertools.permutations(g) for g in atoms_b]))]
    axis_a = tuple(axis for axis, group in enumerate(atoms_a) for _ in group)
    axis_b = tuple(axis for axis, group in enumerate(atoms_b) for _ in group)
    for order_a in orders_a:
        seq_a = [x for group in order_a for x in group]
        position = {size: i for i, size in enumerate(seq_a)}
        for order_b in b_orders[0]:
            seq_b = [x for group in order_b for x in group]
            perm = tuple(position[size] for size in seq_b)
            out.append(Rearrangement(tuple(seq_a), perm, tuple(seq_b), tuple(shape_b),
                                     any(len(g) > 1 for g in atoms_a + atoms_b), axis_a, axis_b))
            if len(out) >= MAX_CANDIDATES:
                return out
    return out


def find(a: np.ndarray, b: np.ndarray, close, dims, *, skip_identity=False):
    """The rearrangement of ``a`` whose values match ``b`` according to ``close(x, y) -> bool``
    (probed on 64 elements first, then confirmed on all); an Ambiguity; or None."""
    found = candidates(a.shape, b.shape, dims)
    if isinstance(found, Ambiguity):
        return found
    probe = _probe_indices(b.size)
    fa, fb = a.reshape(-1), b.reshape(-1)
    for cand in found:
        if skip_identity and cand.is_identity(b.size):
            continue
        if not close(fa[cand.map_flat(probe)], fb[probe]):
            continue
        if close(cand.apply(a), b):
            return cand
    return None


def _probe_indices(numel: int) -> np.ndarray:
    if numel <= 64:
        return np.arange(numel, dtype=np.int64)
    rng = np.random.default_rng(numel)
    return np.unique(np.concatenate([[0, numel - 1], rng.choice(numel, 62, replace=False)])).astype(np.int64)


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
                f"{tuple(int(p) for p in r.perm)}")
    atoms_a = "[" + ", ".join(symbol(s, dims) if dims else str(s) for s in r.a_atoms) + "]"
    atoms_b = "[" + ", ".join(symbol(s, dims) if dims else str(s) for s in r.b_atoms) + "]"
    return (f"a is {shape_text(shape_a, dims)} flattened from {atoms_a}, b is "
            f"{shape_text(b_shape, dims)} flattened from {atoms_b}: values match after "
            f"un-flattening a and permuting axes {tuple(int(p) for p in r.perm)} "
            "(a flatten/reshape in a different axis order)")


def describe_mismatch(shape_a, shape_b, dims) -> str:
    """Why two shapes differ, in the trace's named dims."""
    head = f"a is {shape_text(shape_a, dims)}, b is {shape_text(shape_b, dims)}"
    perm = axis_permutation(shape_a, shape_b)
    if isinstance(perm, Ambiguity):
        return f"{head}: {collision_text(perm.sizes, dims)}"
    if perm is not None:
        return f"{head}: {describe_perm(perm)}"
    if math.prod(shape_a) == math.prod(shape_b):
        return f"{head}: same number of elements, arranged differently (a reshape or flatten)"
    if len(shape_a) == len(shape_b):
        diffs = [f"axis {i}: {symbol(x, dims) if dims else x}={x} vs {symbol(y, dims) if dims else y}={y}"
                 for i, (x, y) in enumerate(zip(shape_a, shape_b)) if x != y]
        return f"{head}: different sizes ({'; '.join(diffs)})"
    return f"{head}: different ranks ({len(shape_a)} vs {len(shape_b)} axes)"


def collision_text(sizes, dims) -> str:
    parts = []
    for size in sizes:
        names = [n for n, v in (dims or {}).items() if int(v) == size]
        if len(names) > 1:
            parts.append(f"dims {', '.join(names)} have the same size {size}")
        elif names:
            parts.append(f"several axes have size {size} ({names[0]})")
        else:
            parts.append(f"several axes have size {size}")
    return ("; ".join(parts) + ": cannot tell which axes were swapped, refusing to guess; "
            "give each dim a distinct size (td.primes.dims)")


def declared_equivalent(r: Rearrangement, layout_a, layout_b) -> bool:
    """Both records declare a layout and the permutation maps one onto the other (NHWC->NCHW)."""
    if r.flatten or not isinstance(layout_a, str) or not isinstance(layout_b, str):
        return False
    if len(layout_a) != len(r.a_atoms) or len(layout_b) != len(r.perm):
        return False
    return all(layout_b[i] == layout_a[p] for i, p in enumerate(r.perm))


def signature(r: Rearrangement) -> tuple:
    """The atom orders on each side (unit axes left out): equal signatures, equal mappings."""
    return (tuple(x for x in r.a_atoms if x > 1), tuple(x for x in r.b_atoms if x > 1))


def consistent(r: Rearrangement, accepted: tuple, layout_a=None, layout_b=None) -> bool:
    """Does ``r`` rearrange axes the way an accepted (declared) layout mapping does?

    Either ``r`` permutes axes by the same positions (the model input: its own channel count
    in the conv's place), or the atoms ``r`` shares with the accepted mapping (at least two)
    are in the same order on each side as there (NHWC -> NCHW, then a flatten of it, then a
    Dense kernel's input axis). The other atoms must stay in place around them, unless both records declare layouts
    whose letters follow every atom (a kernel's IO against OI).
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
    where = {size: i for i, size in enumerate(a_seq)}
    return tuple(where.get(size, -1) for size in b_seq)


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
    where_a = {size: layout_a[axis] for size, axis in zip(r.a_atoms, r.a_axis)}
    where_b = {size: layout_b[axis] for size, axis in zip(r.b_atoms, r.b_axis)}
    return all(where_a.get(size) == letter for size, letter in where_b.items() if size > 1)
