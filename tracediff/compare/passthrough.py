"""Modules an export leaves no node of. An eval-mode Dropout (or an Identity) returns its input:
its record pairs with the node of the tensor it passes through, found between the nodes its
neighbours paired with. Any other module without a node of its own scope (constant-folded away,
as BERT's token type embeddings of a constant input, or fused into a neighbour) has no
counterpart. Records without a pair stay unmatched, and out of the structural alignment, so
they never shift the pairs around them."""
from __future__ import annotations

import math

ERASED_OPS = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
              "FeatureAlphaDropout", "Identity"}
CLOSE = 1e-3   # relative to the tensor's scale: the same tensor, computed by another framework
_STATS = ("mean", "std", "min", "max")


def vanished(named, nodes, result, named_is_a):
    """``[(record, node or None)]`` for each unpaired forward record of the module-named side
    ``named`` whose module left no node among the decoded side's forward ``nodes``."""
    forward = [r for r in named if r.kind == "forward"]
    partner = {}
    for p in result.pairs:
        own, other = (p.a, p.b) if named_is_a else (p.b, p.a)
        if own.kind == "forward":
            partner.setdefault(own.index, other)
    used = result.used_a if named_is_a else result.used_b
    position = {n.index: k for k, n in enumerate(nodes)}
    scopes = {n.meta.get("scope") for n in nodes} - {None}
    if not scopes - {"<root>"}:
        return []   # no module paths decoded (not a torch export): structure decides
    with_nodes = {".".join(s.split(".")[:end]) for s in scopes if isinstance(s, str)
                  for end in range(1, s.count(".") + 2)}
    out = []
    for k, r in enumerate(forward):
        module = r.name.partition(":")[0]
        if r.index in used or module == "<root>" or module in with_nodes:
            continue
        if r.meta.get("op_type") not in ERASED_OPS or r.meta.get("training"):
            out.append((r, None))
            continue
        before = next((f for f in reversed(forward[:k]) if f.index in partner), None)
        after = next((f for f in forward[k + 1:] if f.index in partner), None)
        if before is not None and tuple(before.shape) == tuple(r.shape) \
                and _same_stats(before.stats, r.stats, exact=True):
            out.append((r, partner[before.index]))   # the tensor it passes is its neighbour's
            continue
        lo = position.get(partner[before.index].index, 0) if before is not None else 0
        hi = position.get(partner[after.index].index, len(nodes)) if after is not None else len(nodes)
        if after is not None and module.startswith(after.name.partition(":")[0] + "."):
            hi += 1   # the last op of its parent module: the parent's output may be its own
        close = [n for n in nodes[lo:hi] if n.numel == r.numel and _same_stats(n.stats, r.stats)]
        # the same values in another shape are another tensor (a ViT's Identity patch_embed.norm
        # after flatten(2).transpose(1, 2)): only a node of the same shape is the one it passes;
        # where the export optimised that tensor away (two transposes cancelled), none is
        close = [n for n in close if tuple(n.shape) == tuple(r.shape)]
        out.append((r, close[-1] if close else None))
    return out


def _same_stats(a, b, exact=False) -> bool:
    values = [(a.get(k), b.get(k)) for k in _STATS]
    if not all(isinstance(x, (int, float)) and isinstance(y, (int, float)) and
               math.isfinite(x) and math.isfinite(y) for x, y in values):
        return False
    if exact:
        return all(x == y for x, y in values)
    scale = max(abs(v) for pair in values for v in pair) or 1.0
    return all(abs(x - y) <= CLOSE * scale for x, y in values)
