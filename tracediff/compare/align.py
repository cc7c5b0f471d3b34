"""Alignment: which record of a is compared with which record of b.

Layers, in order (``align="auto"``): (1) exact kind, name and call; (2) the user's rules
(renames and explicit pairs); (3) torch module paths carried by ONNX records (meta ``module``),
then the modules the export left no node of (``passthrough``); (4) structural alignment of the
forward records still unmatched (against an ONNX trace: only with nodes of the record's own
module scope). Backward, parameter and
parameter-gradient records then follow the pairing of their forward records. ``align="name"``
stops after (1); ``align="order"`` pairs each kind by position. What stays unmatched is listed.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ..errors import TraceDiffError
from . import passthrough, steps, structure
from .families import family
from .rules import Rules

ROLE_ALIASES = {
    "weight": "weight", "kernel": "weight", "w": "weight", "gamma": "weight", "scale": "weight",
    "bias": "bias", "b": "bias", "beta": "bias",
    "running_mean": "running_mean", "moving_mean": "running_mean",
    "running_var": "running_var", "moving_variance": "running_var",
    "embeddings": "embedding", "embedding": "embedding",
    "recurrent_kernel": "recurrent_weight", "weight_hh_l0": "recurrent_weight",
}
ALIGN_MODES = ("auto", "name", "order")


@dataclass
class Aligned:
    a: object          # Record
    b: object          # Record
    match: str         # name | rule | module | structure | order
    confidence: float = 1.0
    group: int = 0     # rank of the (step, decode_step, batch_index) groups it was aligned in
    window: tuple | None = None   # ("a" | "b", axis, start, stop): the part of that side compared


class Alignment:
    def __init__(self):
        self.pairs = []
        self.used_a = set()
        self.used_b = set()
        self.held = set()   # (side, index) of records kept out of structural alignment
        self.decoded = None  # "a" or "b": the side whose nodes carry module scopes (ONNX)
        self._keys = set()

    def paired(self, ra, rb) -> bool:
        return (ra.index, rb.index) in self._keys

    def add(self, ra, rb, match, confidence=1.0, reuse_a=False, reuse_b=False):
        if (ra.index in self.used_a and not reuse_a) or (rb.index in self.used_b and not reuse_b):
            return False
        if folded(ra) or folded(rb):
            return False
        self.pairs.append(Aligned(ra, rb, match, float(confidence)))
        self._keys.add((ra.index, rb.index))
        self.used_a.add(ra.index)
        self.used_b.add(rb.index)
        return True


def align(trace_a, trace_b, mode="auto", rules: Rules | None = None):
    """(pairs in b's execution order, unmatched records of a, unmatched records of b)."""
    if mode not in ALIGN_MODES:
        raise TraceDiffError(f"unknown alignment {mode!r}: use one of {', '.join(ALIGN_MODES)}")
    rules = rules or Rules()
    result = Alignment()
    groups_a = _by_position(trace_a)
    groups_b = _by_position(trace_b)
    for rank, (ga, gb, windowed) in enumerate(steps.group_pairs(groups_a, groups_b)):
        start = len(result.pairs)
        if windowed:
            # every decode step of one side against the other's whole-sequence run, whose
            # records each decode step uses again (sliced to its positions)
            own = Alignment()
            _align_step(groups_a[ga], groups_b[gb], mode, rules, own)
            result.pairs.extend(own.pairs)
            result.used_a |= own.used_a
            result.used_b |= own.used_b
        else:
            _align_step(groups_a[ga], groups_b[gb], mode, rules, result)
        for item in result.pairs[start:]:
            item.group = rank
            if windowed:
                item.window = steps.window(item.a, item.b)
    pairs = sorted(result.pairs, key=lambda p: (p.group, p.b.index, p.a.index))
    unmatched_a = [r for r in trace_a if r.index not in result.used_a]
    unmatched_b = [r for r in trace_b if r.index not in result.used_b]
    return pairs, unmatched_a, unmatched_b


def _by_position(trace):
    """Records grouped by (step, decode_step, batch_index): keys are unique within a group."""
    out = {}
    for r in trace:
        out.setdefault(r.position, []).append(r)
    return out


def _of(records, kind, used):
    return [r for r in records if r.kind == kind and r.index not in used]


def _align_step(recs_a, recs_b, mode, rules, result):
    if mode == "order":
        for kind in ("input", "forward", "loss", "backward", "param", "param_grad"):
            for ra, rb in zip(_of(recs_a, kind, result.used_a), _of(recs_b, kind, result.used_b)):
                if ra.numel == rb.numel:   # sizes no layout reconciles: both stay unmatched
                    result.add(ra, rb, "order")
        return
    _by_name(recs_a, recs_b, result, lambda side, name: name, "name")
    if mode == "auto":
        if rules.has_renames:
            _by_name(recs_a, recs_b, result, rules.rename, "rule")
            _explicit(recs_a, recs_b, rules.pairs, result)
        _by_module(recs_a, recs_b, result)
        _structural(recs_a, recs_b, result)
    _follow(recs_a, recs_b, result)


def folded(record) -> bool:
    """A parameter an exporter folded into another op (meta ``folded``: BatchNorm fused into
    the Conv before it): it is no longer the parameter of the same name, and never pairs."""
    return record.kind in ("param", "param_grad") and bool(record.meta.get("folded"))


def _by_name(recs_a, recs_b, result, rename, match):
    """Same kind, name and call. A pair whose sizes cannot be reconciled is refused when the
    name is one of several candidates (calls of a repeated module, generic op-type names such
    as ``BatchNormalization_1``): the one of the same size is taken instead, if any. A unique
    same-name pair is kept, so a real shape bug is reported at its layer."""
    index, by_name = {}, {}
    for rb in recs_b:
        if rb.index not in result.used_b:
            index.setdefault((rb.kind, rename("b", rb.name), rb.call), rb)
            by_name.setdefault((rb.kind, rename("b", rb.name)), []).append(rb)
    for ra in recs_a:
        if ra.index in result.used_a:
            continue
        name = rename("a", ra.name)
        rb = index.get((ra.kind, name, ra.call))
        if rb is None:
            continue
        if rb.numel != ra.numel:
            same = by_name.get((ra.kind, name), [])
            if len(same) > 1 or _generic(ra) or _generic(rb):
                rb = _same_size(ra, same, result)
                if rb is None:
                    continue
        result.add(ra, rb, match)


def _generic(record) -> bool:
    """A name made of the op type and a counter (``BatchNormalization_1``, ``conv2d_3``): one of
    several nodes that share that stem, not a name anybody chose."""
    op_type = record.meta.get("op_type")
    leaf = record.name.replace("/", ".").rsplit(".", 1)[-1]
    stem = re.sub(r"[_:]\d+$", "", leaf)
    if not isinstance(op_type, str) or not op_type or stem == leaf:
        return False
    return re.sub(r"[^a-z0-9]", "", stem.lower()) == re.sub(r"[^a-z0-9]", "", op_type.lower())


def _same_size(ra, candidates, result):
    fits = [rb for rb in candidates if rb.index not in result.used_b and rb.numel == ra.numel]
    if not fits:
        return None
    return min(fits, key=lambda rb: (sorted(rb.shape) != sorted(ra.shape), abs(rb.call - ra.call)))


def _explicit(recs_a, recs_b, explicit, result):
    for kind, name_a, name_b in explicit:
        side_a = {r.call: r for r in recs_a if r.kind == kind and r.name == name_a}
        side_b = {r.call: r for r in recs_b if r.kind == kind and r.name == name_b}
        for call, ra in side_a.items():
            if call in side_b:
                result.add(ra, side_b[call], "rule")


def _decoded(records) -> bool:
    """Records named after graph nodes, with the module path in meta (an ONNX trace): most
    forward records carry a meta module that is not their own name (a torch trace's module
    records carry their own path; ``lstm:0`` and ``<root>`` count as their own)."""
    forward = [r for r in records if r.kind == "forward"]
    foreign = 0
    for r in forward:
        if "onnx_output" in r.meta:  # an ONNX node, with or without a module to pair by
            foreign += 1
            continue
        module = r.meta.get("module")
        if not isinstance(module, str):
            continue
        own = r.name.split(":")[0]
        if module != own and not (own == "<root>" and module in ("", "<root>")):
            foreign += 1
    return bool(forward) and foreign * 2 > len(forward)


def _by_module(recs_a, recs_b, result):
    """A module-named forward record pairs with the LAST node of the other side whose meta
    module is that path (or inside it); ``<root>`` pairs with the graph output. A module's
    first tuple output (``attn:0``) pairs as the module. Modules that the export erased (eval
    Dropout, Identity) then pair with the node of the tensor they pass through, or stay out."""
    for named, decoded, named_is_a in ((recs_a, recs_b, True), (recs_b, recs_a, False)):
        if not _decoded(decoded) or _decoded(named):
            continue
        used_named = result.used_a if named_is_a else result.used_b
        used_decoded = result.used_b if named_is_a else result.used_a
        nodes = [r for r in decoded if r.kind == "forward"]
        result.decoded = "b" if named_is_a else "a"
        _by_folded(named, nodes, result, named_is_a)
        for r in named:
            if r.kind != "forward" or r.index in used_named or r.call != 0:
                continue
            module = _module_of(r)
            if module is None:
                continue
            exact = [n for n in nodes if n.meta.get("module") == module and n.index not in used_decoded]
            inside = [n for n in nodes if str(n.meta.get("module", "")).startswith(module + ".")]
            if module == "<root>":
                inside = [n for n in nodes if n.meta.get("graph_output")] or nodes
            chosen, reuse = (exact[-1], False) if exact else ((inside[-1], True) if inside else (None, False))
            if chosen is None or chosen.numel != r.numel:
                continue
            _add(result, r, chosen, named_is_a, "module", 1.0, reuse)
        for r, node in passthrough.vanished(named, nodes, result, named_is_a):
            if node is None:
                result.held.add(("a" if named_is_a else "b", r.index))
            else:
                _add(result, r, node, named_is_a, "module", 1.0, True)


def _module_of(record):
    """The module path a module-named record stands for: its name, without the ``:0`` of a
    module's first tuple output; None for the other tuple outputs."""
    name, _, output = record.name.partition(":")
    if output and output != "0":
        return None
    return name


def _add(result, named, node, named_is_a, match, confidence, reuse):
    if named_is_a:
        return result.add(named, node, match, confidence, reuse_b=reuse)
    return result.add(node, named, match, confidence, reuse_a=reuse)


def _by_folded(named, nodes, result, named_is_a):
    """A node the exporter folded another op into (meta ``folded``: the legacy exporter fuses an
    eval-mode BatchNorm into the Conv before it) holds the output of the first module of the
    folded op's family that runs after the node's own module (meta ``scope``)."""
    order = [r for r in named if r.kind == "forward" and r.call == 0]
    position = {r.name: i for i, r in enumerate(order)}
    for node in nodes:
        folded, scope = node.meta.get("folded"), node.meta.get("scope")
        if not isinstance(folded, str) or scope not in position:
            continue
        target = next((r for r in order[position[scope] + 1:]
                       if family(r.meta.get("op_type")) == family(folded)), None)
        if target is None or target.numel != node.numel:
            continue
        if named_is_a:
            result.add(target, node, "module", 1.0)
        else:
            result.add(node, target, "module", 1.0)


# Ops one framework records as a layer where another does them inline (``out += identity``,
# ``torch.flatten``): when only one side has any, they have no counterpart there.
FUNCTIONAL = {"add", "mul", "concat", "flatten", "transpose"}


def _one_sided(fwd_a, fwd_b, result):
    """Hold out of structural alignment the records of a functional op family the other side
    never records: they have no counterpart, and pairing them would shift the pairs around."""
    fam_a = {family(r.meta.get("op_type")) for r in fwd_a}
    fam_b = {family(r.meta.get("op_type")) for r in fwd_b}
    for side, records, other in (("a", fwd_a, fam_b), ("b", fwd_b, fam_a)):
        for r in records:
            fam = family(r.meta.get("op_type"))
            if fam in FUNCTIONAL and fam not in other:
                result.held.add((side, r.index))


def _structural(recs_a, recs_b, result):
    fwd_a = [r for r in recs_a if r.kind == "forward"]
    fwd_b = [r for r in recs_b if r.kind == "forward"]
    _one_sided(fwd_a, fwd_b, result)
    pos_a = {r.index: i for i, r in enumerate(fwd_a)}
    pos_b = {r.index: j for j, r in enumerate(fwd_b)}
    anchors = sorted((pos_a[p.a.index], pos_b[p.b.index]) for p in result.pairs
                     if p.a.index in pos_a and p.b.index in pos_b)
    anchors = _increasing(anchors)
    bounds = [(-1, -1)] + anchors + [(len(fwd_a), len(fwd_b))]
    for (a0, b0), (a1, b1) in zip(bounds, bounds[1:]):
        seg_a = [r for r in fwd_a[a0 + 1:a1]
                 if r.index not in result.used_a and ("a", r.index) not in result.held]
        seg_b = [r for r in fwd_b[b0 + 1:b1]
                 if r.index not in result.used_b and ("b", r.index) not in result.held]
        for i, j, sim in structure.align(seg_a, seg_b):
            if _within_scope(seg_a[i], seg_b[j], result.decoded):
                result.add(seg_a[i], seg_b[j], "structure", sim)


def _within_scope(ra, rb, decoded) -> bool:
    """A module's output is computed inside the module: a module-named record never pairs
    structurally with a node the export filed under another module (or the root), which would
    be a neighbour's value (an attention block's second output with the next layer's weight)."""
    if decoded is None:
        return True
    named, node = (ra, rb) if decoded == "b" else (rb, ra)
    scope = node.meta.get("scope")
    module = named.name.partition(":")[0]
    if not isinstance(scope, str) or module == "<root>":
        return True
    return scope == module or scope.startswith(module + ".")


def _increasing(anchors):
    """The longest chain of anchors increasing in both a and b order (crossing ones dropped)."""
    import bisect

    tails, tails_idx, parent = [], [], [-1] * len(anchors)
    for k, (_, bj) in enumerate(anchors):
        pos = bisect.bisect_left(tails, bj)
        if pos == len(tails):
            tails.append(bj)
            tails_idx.append(k)
        else:
            tails[pos] = bj
            tails_idx[pos] = k
        parent[k] = tails_idx[pos - 1] if pos else -1
    out, k = [], tails_idx[-1] if tails_idx else -1
    while k >= 0:
        out.append(anchors[k])
        k = parent[k]
    return out[::-1]


def owner(record) -> str:
    module = record.meta.get("module")
    if isinstance(module, str) and module and module != record.name:
        return module
    name = record.name
    cut = max(name.rfind("."), name.rfind("/"))
    return name[:cut] if cut > 0 else ""


def role(record) -> str:
    declared = record.meta.get("role")
    if isinstance(declared, str) and declared:
        return declared
    leaf = record.name.replace("/", ".").rsplit(".", 1)[-1].split(":")[0].lower()
    return ROLE_ALIASES.get(leaf, leaf)


def _follow(recs_a, recs_b, result):
    """Backward records follow their forward pair; parameters follow their owner's forward pair
    (by role, then shape up to transpose); parameter gradients follow their parameter."""
    forward = [p for p in result.pairs if p.a.kind == "forward"]
    back_a = {(r.name, r.call): r for r in recs_a if r.kind == "backward"}
    back_b = {(r.name, r.call): r for r in recs_b if r.kind == "backward"}
    # a forward record paired twice (a module and the child ending it, an erased Dropout and
    # the tensor it passes) shares its backward record the same way
    shared_a = Counter(p.a.index for p in forward)
    shared_b = Counter(p.b.index for p in forward)
    for p in sorted(forward, key=lambda p: (p.b.index, p.a.index)):
        ra, rb = back_a.get((p.a.name, p.a.call)), back_b.get((p.b.name, p.b.call))
        if ra is None or rb is None or result.paired(ra, rb):
            continue
        result.add(ra, rb, p.match, p.confidence,
                   reuse_a=shared_a[p.a.index] > 1, reuse_b=shared_b[p.b.index] > 1)
    owners = {}
    for p in result.pairs:
        if p.a.kind == "forward" and p.a.call == 0:
            owners.setdefault(p.a.name, p)
            module = p.a.meta.get("module")
            if isinstance(module, str) and module:
                owners.setdefault(module, p)
    params = {}
    for p in result.pairs:
        if p.a.kind == "param":
            params[p.a.name] = (p.b.name, p.match, p.confidence)
    for kind in ("param", "param_grad"):
        free_b = [r for r in recs_b if r.kind == kind and r.index not in result.used_b]
        for ra in recs_a:
            if ra.kind != kind or ra.index in result.used_a:
                continue
            if kind == "param_grad" and ra.name in params:
                b_name, how, confidence = params[ra.name]
                match = next((r for r in free_b if r.name == b_name and r.index not in result.used_b), None)
                if match is not None:
                    result.add(ra, match, how, confidence)
                    continue
            fp = owners.get(owner(ra))
            if fp is None:
                continue
            target_owner = fp.b.meta.get("module") if isinstance(fp.b.meta.get("module"), str) else fp.b.name
            candidates = [r for r in free_b if r.index not in result.used_b
                          and owner(r) in (fp.b.name, target_owner)]
            best = _best_param(ra, candidates)
            if best is not None:
                result.add(ra, best, fp.match, fp.confidence)
                if kind == "param":
                    params[ra.name] = (best.name, fp.match, fp.confidence)
    for kind in ("input", "loss"):
        for ra, rb in zip(_of(recs_a, kind, result.used_a), _of(recs_b, kind, result.used_b)):
            if ra.numel == rb.numel:
                result.add(ra, rb, "order")


def _best_param(ra, candidates):
    want_role = role(ra)
    want_shape = sorted(ra.shape)
    scored = []
    for k, rb in enumerate(candidates):
        score = (role(rb) == want_role) * 2 + (sorted(rb.shape) == want_shape) * 1
        if rb.numel != ra.numel:
            continue
        scored.append((-score, k, rb))
    if not scored:
        return None
    scored.sort(key=lambda t: (t[0], t[1]))
    best = scored[0]
    return best[2] if -best[0] >= 1 else None
