"""The layers replay need not run again: those whose every consumed record, and whose own
output, the candidate recorded bit-identical to the reference's. Run on the reference's inputs
(the very values it was recorded on), such a layer computes its recorded output again, which is
the reference's: its local result is ``ok`` with no error, and the replay says it took it from
the recording (``local["from"] == "recorded"``). A clean prefix of a network (everything before
the first bug, all of a correct port recorded in the same framework) then costs nothing to
replay. Parameter gradients likewise: a parameter whose recorded gradient is bit-identical to
the reference's, held by a module every call of which is unchanged and got the reference's own
dL/d(output), has the reference's gradient as its local one. And, where the candidate's replay
computes dL/d of consumed records by each call's VJP, a record's dL/d: the reference's is the
sum of its consumers' VJPs, so where it is bit-identical and every consumer is such an
unchanged call, that sum is the recorded dL/d. A call whose VJP would give only recorded
results is given no seed (``quiet``) and is not differentiated; one that must run keeps every
other consumer of what it consumed running, so no sum is judged with a share missing."""
from __future__ import annotations

from dataclasses import dataclass, field

from .dataflow import consumed

RECORDED = "recorded"
# the candidates whose replay computes dL/d(a layer's input) by the layers' VJPs
BACKWARD_REPLAYED = {"numpy", "torch", "tensorflow", "onnx", "jax"}
NO_VJP_LEFT_OUT = {"numpy"}     # a layer its replay leaves out has no VJP (no backward=)
SORTED_BY = {"tensorflow"}      # a sum's consumers named in sorted order, not call order
MERGES_NAMES = {"torch"}        # one tensor's names share one dL/d sum in the adapter's VJPs
NOT_PURE = ("Dropout",)     # recorded in training mode, replayed in eval mode: not the same run
ENABLED = True      # False: every layer runs (what the shortcut's results are checked against)


@dataclass
class Unchanged:
    forward: set = field(default_factory=set)      # (record name, call) of forward records
    params: set = field(default_factory=set)       # parameter record names
    # (record name, call) of consumed records whose dL/d is the recorded one -> the layers
    # whose VJPs would sum to it (``by``)
    backward: dict = field(default_factory=dict)
    quiet: set = field(default_factory=set)        # (name, call) of layer calls needing no VJP
    loud: bool = False      # some call with a seed must run its VJP

    def drop_from(self, local, grads, input_grads):
        """Leave the adapter's results for what is taken from the recording out of judging."""
        for key in self.forward:
            local.pop(key, None)
        for name in self.params:
            grads.pop(name, None)
        for key in self.backward:
            input_grads.pop(key, None)


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
              framework=None) -> Unchanged:
    """The forward records of ``wanted``, the parameters and (where ``framework``'s replay
    computes dL/d of consumed records by each call's VJP) the dL/d of consumed records whose
    local result is their recorded one, and the calls needing no VJP (see the module).
    ``runs_alone(name)``: whether the layer of a record can be left out of the replay on its
    own (a NumPy layer whose backward needs its forward cannot)."""
    backward = framework in BACKWARD_REPLAYED
    if not ENABLED:
        return Unchanged(loud=backward)
    same = identical_pairs(report, layouts)
    result = Unchanged()
    calls, sources, records = {}, {}, []
    for r in trace_a:
        if r.kind != "forward":
            continue
        calls.setdefault(_owner(r), []).append(r)
        records.append(r)
        sources[r.index] = consumed(trace_a, r)
        if ((r.name, r.call) in wanted and ("forward", r.name, r.call) in same
                and runs_alone(r.name)
                and not _impure(r)
                and all(source in same for source in sources[r.index])):
            result.forward.add((r.name, r.call))

    def unchanged_call(record):     # its output and its dL/d(output) are the reference's
        return (record.name, record.call) in result.forward and (
            "backward", record.name, record.call) in same

    owned = {}       # module -> its parameters' names
    for p in report.pairs:
        if p.kind != "param_grad":
            continue
        module = p.a_name.rpartition(".")[0] or "<root>"
        owned.setdefault(module, []).append(p.a_name)
        if (("param_grad", p.a_name, p.a_call) in same and module in calls
                and all(unchanged_call(r) for r in calls[module])):
            result.params.add(p.a_name)
    seeded = {(p.a_name, p.a_call) for p in report.pairs if p.kind == "backward"}
    if backward and seeded and any(r.meta.get("inputs_partial") or r.meta.get("inputs") == []
                                   for r in records):
        # an op no record names consumes some record (a call fed only by such ops declares
        # no input): who sends dL/d where is the VJPs' to find, so every call runs
        result.loud = True
        return result
    containers = _containers(records)
    silent = _silent(records, containers) if backward and seeded else {}
    groups = _one_tensor(silent) if framework in MERGES_NAMES else {}
    if backward and seeded and _aliased(trace_a, records, sources, silent, groups):
        result.loud = True
        return result
    if backward and framework not in NO_VJP_LEFT_OUT:
        result.backward = _recorded_backward(records, sources, silent, containers, same,
                                             unchanged_call, framework in SORTED_BY, groups)
    orphans = any(p.kind == "param_grad" and p.a_name not in result.params
                  and (p.a_name.rpartition(".")[0] or "<root>") not in calls for p in report.pairs)
    for name, records_of in calls.items():
        # a call needs no VJP where its parameters' gradients are recorded ones (none is where
        # some parameter's module is unknown) and (where the replay computes dL/d of inputs)
        # so is the dL/d of every record it consumed: the sum over a record's consumers needs
        # every consumer's share
        if not orphans and all(p in result.params for p in owned.get(name, [])) and all(
                (r.name, r.call) in result.forward for r in records_of) and (
                not backward or all(
                    (r.name, r.call) in silent or _module(r) not in containers and all(
                        (s[1], s[2]) in result.backward or (s[1], s[2]) not in seeded
                        for s in sources[r.index])
                    for r in records_of)):
            result.quiet.update((r.name, r.call) for r in records_of)
    result.loud = backward and any((r.name, r.call) not in result.quiet
                                   and (r.name, r.call) in seeded for r in records)
    return result


def _owner(record):
    """The module whose parameters a call uses: its meta ``module`` (``<root>`` for the
    model), else its record name."""
    module = record.meta.get("module")
    return (str(module) or "<root>") if module is not None else record.name


def _module(record):
    return str(record.meta.get("module", record.name.partition(":")[0]))


def _containers(records) -> set:
    """The module paths other recorded calls run inside (a torch container, a nested Keras
    model or Flax module): a call of one may send dL/d to their outputs."""
    found = set()
    for r in records:
        path = _module(r)
        if path:
            found.add("")
            found.update(path[:i] for i, c in enumerate(path) if c in "./")
    return found


def _silent(records, containers) -> dict:
    """The container calls that return a value one of their inner calls recorded, unchanged
    (``nn.Sequential``), each with that inner call's ``(record name, call)``: their output is
    that call's, and their VJP sends nothing back."""
    found = {}
    for r in records:
        path = _module(r)
        if path not in containers:
            continue
        inner = [i for i in records if i.index < r.index and _module(i) != path and (
            not path or _module(i).startswith((path + ".", path + "/")))]
        equal = next((i for i in reversed(inner) if _equal(i, r)), None)
        if equal is not None:
            found[(r.name, r.call)] = (equal.name, equal.call)
    return found


def _one_tensor(silent) -> dict:
    """``(record name, call) -> (every name of that tensor, first one first)``: a silent
    container's record and the inner record it returns (through nested ``nn.Sequential``s,
    a stage, its last block and that block's last layer are one tensor)."""
    groups = {}
    for outer, inner in silent.items():
        members = tuple(dict.fromkeys(groups.get(inner, (inner,)) + groups.get(outer, (outer,))))
        for member in members:
            groups[member] = members
    return groups


def _aliased(trace_a, records, sources, silent, groups) -> bool:
    """Whether some records may be one tensor under two names, where a VJP's senders differ
    from the consumers meta ``inputs`` lists: a call whose output equals a record it consumed
    (``nn.Identity``, a shortcut that returns its input), or a silent container whose output
    some call consumes, where the adapter's VJP judges the inner call's record as well and
    ``groups`` does not say which names are one tensor."""
    consumed_names = {(s[1], s[2]) for r in records for s in sources[r.index]}
    if any((name, call) in consumed_names and (name, call) not in groups
           for name, call in silent):
        return True
    known = {}
    for r in trace_a:
        known.setdefault((r.kind, r.name, r.call), r)
    return any(source in known and _equal(known[source], r)
               for r in records for source in sources[r.index])


def _equal(a, b) -> bool:
    """Whether two records hold the same tensor's values: by their recorded hash (SHA-256 of
    the values, as the diff trusts it), else by reading them."""
    import numpy as np
    if list(a.shape) != list(b.shape) or a.dtype != b.dtype:
        return False
    if a.hash and b.hash:
        return a.hash == b.hash
    return a.stored and b.stored and np.array_equal(a.read(), b.read())


def _recorded_backward(records, sources, silent, containers, same, unchanged_call,
                       by_name, groups) -> dict:
    """``{(record name, call): [consumer layers]}`` of the consumed records whose dL/d is
    bit-identical to the reference's and whose every consumer (meta ``inputs``) is an
    unchanged call with the reference's dL/d(output): the sum of their VJPs, run on the
    reference's values, is the recorded dL/d. A consumer that is a container (other than a
    silent one) may also send dL/d to records no meta names, so it is always run. The names
    of one tensor (``groups``) share their consumers: the adapter sums them all for each."""
    consumers = {}
    for r in records:
        for source in sources[r.index]:
            names = groups.get((source[1], source[2]), ((source[1], source[2]),))
            consumers.setdefault(names, []).append(r)
    found = {}
    for names, users in consumers.items():
        if not all(("backward", name, call) in same for name, call in names):
            continue
        by = [u for u in users if (u.name, u.call) not in silent]
        if by and all(unchanged_call(u) for u in by) and not any(
                _module(u) in containers for u in by):
            layers = list(dict.fromkeys(u.name.partition(":")[0] for u in by))
            for key in names:
                found[key] = sorted(layers) if by_name else layers
    return found


def needs_run(report, wanted, same) -> bool:
    """Whether any layer must run: a forward record or a parameter gradient whose local result
    is not its recorded one, or a call whose VJP is needed (``same.loud``)."""
    return (any(key not in same.forward for key in wanted)
            or any(p.kind == "param_grad" and p.a_name not in same.params for p in report.pairs)
            or same.loud)


def put_recorded(report, same, policy) -> None:
    """``local`` of every pair ``same`` takes from the recording."""
    for p in report.pairs:
        key = (p.a_name, p.a_call)
        if p.kind == "forward" and key in same.forward or p.kind == "param_grad" \
                and p.a_name in same.params:
            p.local = recorded_local(p, policy)
        elif p.kind == "backward" and key in same.backward:
            by = same.backward[key]
            p.local = {**recorded_local(p, policy), "by": by[0] if len(by) == 1 else by}


def without_seeds(values, quiet):
    """``values`` without the reference's dL/d(output) of the layer calls in ``quiet``: their
    VJPs give only gradients that are recorded ones, so the adapter, finding no seed, does not
    run them."""
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


def random_in_training(record) -> bool:
    """Whether a forward record is a dropout's, recorded in training mode (meta ``training``):
    replay runs dropout off, so its local output cannot be the recorded one."""
    return record.meta.get("training") is True and _impure(record)


def _impure(record) -> bool:
    """Whether a record's layer is one replay runs otherwise than it was recorded (dropout)."""
    return any(word in str(record.meta.get("op_type", "")) for word in NOT_PURE)
