"""Forward runs of a prepared ONNX graph group by group, holding only what later groups read:
the shape probe of a large graph and the grouped backward's recomputation both run this way."""
from __future__ import annotations

import numpy as np

from ....errors import TraceDiffError
from ..plan import estimate_sizes, group_model, last_reads, plan_groups


def run_forward(model, groups, feeds, keep, providers, also=(), release=False):
    """Run ``groups`` in order; yield ``(group, {tensor: value})`` for the group outputs in
    ``keep`` or ``also``. Tensors not in ``keep`` are not carried to later groups: every
    group input must be a feed or in ``keep``. ``release``: drop a carried tensor after the
    last group reading it."""
    nodes = list(model.graph.node)
    initializers = {t.name: t for t in model.graph.initializer}
    carried = dict(feeds)
    also = set(also)
    last = last_reads(groups) if release else {}
    for position, group in enumerate(groups):
        wanted = [t for t in group.outputs if t in keep or t in also]
        if not wanted:
            continue
        proto = group_model(model, nodes, group, initializers, carried, outputs=wanted)
        values = dict(zip(wanted, run_model(proto, wanted, {t: carried[t] for t in group.inputs},
                                       providers)))
        del proto
        carried.update((t, v) for t, v in values.items() if t in keep)
        if release:
            for tensor in group.inputs:
                if last.get(tensor, -1) <= position:
                    carried.pop(tensor, None)
        yield group, values


def probe_in_groups(model, feeds, names, budget, providers):
    """``[(tensor, dtype, shape)]`` for ``names`` from a forward run in groups whose outputs fit
    ``budget`` bytes (sizes estimated), or None when the graph is one group (then one plain
    run of only ``names`` is cheaper)."""
    graph = model.graph
    types = {v.name: v.type for v in list(graph.value_info) + list(graph.output)}
    known = {name: np.asarray(array).nbytes for name, array in feeds.items()}
    nodes = list(graph.node)
    groups = plan_groups(nodes, estimate_sizes(nodes, types, known), budget, feeds,
                         {t.name for t in graph.initializer})
    if len(groups) < 2:
        return None
    carried = set()
    for group in groups:
        carried.update(group.inputs)
    wanted, found = set(names), []
    try:
        for _, values in run_forward(model, groups, feeds, carried, providers, also=wanted,
                                     release=True):
            found.extend((t, v.dtype, v.shape) for t, v in values.items()
                         if t in wanted and isinstance(v, np.ndarray))
    except TraceDiffError:  # the gradient run itself will name what is wrong
        return []
    return found


def run_model(model, outputs, feeds, providers):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # its blocks would outlive the group
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise TraceDiffError(f"onnxruntime cannot load a gradient group ({short_error(exc)}); "
                             "save the whole gradient model with save_grad_model= and report "
                             "the node named") from None
    try:
        return session.run(outputs, feeds)
    except Exception as exc:
        raise TraceDiffError(f"onnxruntime failed running a gradient group "
                             f"({short_error(exc)}); check the target and input shapes") from None



def short_error(exc):
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
