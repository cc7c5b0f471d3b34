"""The layers replay need not run again: those whose every consumed record, and whose own
output, the candidate recorded bit-identical to the reference's. Run on the reference's inputs
(the very values it was recorded on), such a layer computes its recorded output again, which is
the reference's: its local result is ``ok`` with no error, and the replay says it took it from
the recording (``local["from"] == "recorded"``). A clean prefix of a network (everything before
the first bug, all of a correct port recorded in the same framework) then costs nothing to
replay. Parameter gradients likewise: a parameter whose recorded gradient is bit-identical to
the reference's, held by a module every call of which is unchanged and got the reference's own
dL/d(output), has the reference's gradient as its local one."""
from __future__ import annotations

from dataclasses import dataclass, field

from .dataflow import consumed

RECORDED = "recorded"
# the candidates whose replay computes dL/d(a layer's input) by the layers' VJPs: their
# calls all run wherever the report has backward pairs
BACKWARD_REPLAYED = {"numpy", "torch", "tensorflow", "onnx", "jax"}
NOT_PURE = ("Dropout",)     # recorded in training mode, replayed in eval mode: not the same run


@dataclass
class Unchanged:
    forward: set = field(default_factory=set)      # (record name, call) of forward records
    params: set = field(default_factory=set)       # parameter record names
    quiet: set = field(default_factory=set)        # (name, call) of layer calls needing no VJP
    backward_replayed: bool = False                # the candidate's replay computes dL/d inputs

    def drop_from(self, local, grads, input_grads):
        """Leave the adapter's results for what is taken from the recording out of judging."""
        for key in self.forward:
            local.pop(key, None)
        for name in self.params:
            grads.pop(name, None)


def identical_pairs(report, layouts) -> set:
    """``(kind, a_name, a_call)`` of the pairs whose values are bit-identical: no difference
    over every element (not a sample), no NaN or Inf, the same shape and dtype, no layout."""
    found = set()
    for p in report.pairs:
        stats = p.stats or {}
        if (p.status == "ok" and stats.get("max_abs") == 0.0 and stats.get("sampled") is False
                and not any(stats.get(k) for k in ("nan_a", "nan_b", "inf_a", "inf_b"))
                and list(p.shape_a) == list(p.shape_b) and p.dtype_a == p.dtype_b
                and layouts.get(id(p), False) is None):
            found.add((p.kind, p.a_name, p.a_call))
    return found


def unchanged(report, trace_a, layouts, wanted, *, runs_alone=lambda name: True,
              backward=False) -> Unchanged:
    """The forward records of ``wanted`` and the parameters whose local result is their
    recorded one (see the module). ``runs_alone(name)``: whether the layer of a record can be
    left out of the replay on its own (a NumPy layer whose backward needs its forward cannot).
    ``backward``: whether the candidate's replay computes dL/d of consumed records by each
    call's VJP; every call then runs (``quiet`` stays empty)."""
    same = identical_pairs(report, layouts)
    result = Unchanged(backward_replayed=backward)
    calls, sources = {}, {}
    for r in trace_a:
        if r.kind != "forward":
            continue
        calls.setdefault(r.name, []).append(r)
        sources[r.index] = consumed(trace_a, r)
        if ((r.name, r.call) in wanted and ("forward", r.name, r.call) in same
                and runs_alone(r.name)
                and not any(word in str(r.meta.get("op_type", "")) for word in NOT_PURE)
                and all(source in same for source in sources[r.index])):
            result.forward.add((r.name, r.call))

    def unchanged_calls(records):
        return all((r.name, r.call) in result.forward and ("backward", r.name, r.call) in same
                   for r in records)

    owned = {}       # module -> its parameters' names
    for p in report.pairs:
        if p.kind != "param_grad":
            continue
        module = p.a_name.rpartition(".")[0] or "<root>"
        owned.setdefault(module, []).append(p.a_name)
        if (("param_grad", p.a_name, p.a_call) in same and module in calls
                and unchanged_calls(calls[module])):
            result.params.add(p.a_name)
    if backward:
        return result      # every call's VJP gives dL/d of what it consumed: all run
    for name, records in calls.items():
        # a call needs no VJP where its parameters' gradients are all recorded ones
        if all(p in result.params for p in owned.get(name, [])) and all(
                (r.name, r.call) in result.forward for r in records):
            result.quiet.update((r.name, r.call) for r in records)
    return result


def needs_run(report, wanted, same) -> bool:
    """Whether any layer must run: a forward record or a parameter gradient whose local result
    is not its recorded one, or (where the candidate's replay computes them) any dL/d of a
    consumed record."""
    return (any(key not in same.forward for key in wanted)
            or any(p.kind == "param_grad" and p.a_name not in same.params for p in report.pairs)
            or same.backward_replayed and any(p.kind == "backward" for p in report.pairs))


def put_recorded(report, same, policy) -> None:
    """``local`` of every pair ``same`` takes from the recording."""
    for p in report.pairs:
        key = (p.a_name, p.a_call)
        if p.kind == "forward" and key in same.forward or p.kind == "param_grad" \
                and p.a_name in same.params:
            p.local = recorded_local(p, policy)


def without_seeds(values, quiet):
    """``values`` without the reference's dL/d(output) of the layer calls in ``quiet``: their
    VJPs give only parameter gradients that are recorded ones, so the adapter, finding no
    seed, does not run them (never where the replay computes dL/d of inputs)."""
    if not quiet:
        return values

    def seeded(kind, name, call):
        if kind == "backward" and (name, call) in quiet:
            return None
        return values(kind, name, call)

    seeded.layouts = values.layouts
    return seeded


def recorded_local(pair, policy) -> dict:
    """``local`` of a pair whose replay would give its recorded value, the reference's."""
    tol = policy.resolve(pair.kind, pair.a_name, pair.b_name, pair.dtype_a, pair.dtype_b, 1)
    return {"status": "ok", "rel_l2": 0.0, "max_abs": 0.0, "sqnr_db": None,
            "tolerance": tol.to_dict(), "from": RECORDED}
