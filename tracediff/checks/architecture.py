"""What the checks know of architecture: normalisation layers, residual blocks, zero-init gates.

Real networks put small values where they are harmless by design: a convolution whose output a
BatchNorm rescales right after, a residual branch initialised near zero (zero-init residual
BatchNorm, ConvNeXt/CaiT layer scale, GPT-2's 0.02 projections) whose block output carries the
stream unchanged. The checks judge the values that propagate, not each branch's raw output.
Without a recorded dataflow graph, structure is read from module paths (``layer1.0.bn2`` lies in
the block ``layer1.0``) and from the execution order (a record's consumer is the next record).
"""
from __future__ import annotations

import re

import numpy as np

from .context import CheckContext, is_float_record, role, unit_axis, values

# a 1-D scale whose every value is within this is a gate: zero-init residual BatchNorm (weight 0),
# layer scale (ConvNeXt 1e-6, CaiT 1e-5..1e-4)
GATE_SCALE = 1e-4
# a gate's pre-activation is computed by at most this many records inside one module
GATE_CHAIN = 4
GATE_OPS = {"sigmoid", "hardsigmoid", "softmax"}
# the std a normalisation's output has when it restores scale (weight 1 at initialisation)
RESTORED = (0.5, 2.0)
# how many records after a value its normalisation may come (interleaved branches)
LOOKAHEAD = 6
AFFINE_CORRELATION = 0.99
# a block output below this std carries no signal on (the activation_spread fail bound)
CARRIER_STD = 1e-3
# ops that pass a tensor on unchanged in scale (training-mode dropout rescales by 1/(1-p) only)
PASS_THROUGH = {"dropout", "identity", "flatten", "zeropad2d", "zeropadding2d", "padding"}


def op_name(record) -> str:
    return str(record.meta.get("op_type", "")).lower().replace("_", "")


def is_norm(record) -> bool:
    """BatchNorm*, LayerNorm, GroupNorm, InstanceNorm, RMSNorm, Keras *Normalization, and model
    specific ones named so (ConvNextLayerNorm, T5LayerNorm...)."""
    return "norm" in op_name(record)


def base_name(name: str) -> str:
    """``attn:0`` -> ``attn``: the module of a part of a structured output."""
    return name.split(":", 1)[0]


def module_path(record) -> str:
    """The module (torch) or layer (Keras, ONNX) a record comes from."""
    module = record.meta.get("module")
    if isinstance(module, str) and module:
        return module
    if record.kind in ("param", "param_grad"):
        for sep in ("/", "."):
            if sep in record.name:
                return record.name.rsplit(sep, 1)[0]
        return ""
    return base_name(record.name)


def ancestors(path: str) -> list:
    """``a.b.c`` -> [``a.b``, ``a``] (nearest first); ``/`` separates Keras layer paths."""
    parts = [m.start() for m in re.finditer(r"[./]", path)]
    return [path[:i] for i in reversed(parts)]


def inside(path: str, block: str) -> bool:
    return path == block or path.startswith(block + ".") or path.startswith(block + "/")


class Structure:
    """Per-step lookups over the forward records: outputs by module, consumers, gates."""

    def __init__(self, ctx: CheckContext):
        self.ctx = ctx
        self.forward = [r for r in ctx.forward if is_float_record(r)]
        self.position = {r.index: i for i, r in enumerate(self.forward)}
        self.by_module = {}
        for r in self.forward:
            self.by_module.setdefault(base_name(r.name), []).append(r)
        self._gates = None

    def consumer(self, record):
        """The next forward record in execution order that is not the same tensor again under
        a container's name, nor a pass-through op (dropout, identity, padding)."""
        i = self.position.get(record.index)
        if i is None:
            return None
        for later in self.forward[i + 1:]:
            if later.shape == record.shape and later.stats == record.stats:
                continue
            if op_name(later) in PASS_THROUGH and later.numel >= record.numel:
                continue
            return later
        return None

    def normaliser(self, record):
        """The normalisation that the record's values go into, which removes their scale (a Conv
        followed by its BatchNorm), or None. The next record when it is a normalisation of the
        same size; else one of the next few (graphs interleave branches: Keras runs a ResNet's
        shortcut conv between the last conv of a block and its BatchNorm) whose values are,
        per channel, an affine function of the record's."""
        after = self.consumer(record)
        if after is not None and is_norm(after) and after.numel == record.numel:
            return after
        i = self.position.get(record.index)
        if i is None or not record.stored:
            return None
        for later in self.forward[i + 1: i + 1 + LOOKAHEAD]:
            if is_norm(later) and later.shape == record.shape and later.stored and \
                    _affine_per_channel(values(record), values(later), unit_axis(record, self.ctx)):
                return later
        return None

    def healthy_block_around(self, record, low, high):
        """The nearest enclosing module whose output has the record's size (its shape, or a
        permutation of it: ConvNeXt's branch runs channels-last inside a channels-first block)
        is a healthy stream (``_stream_healthy``) while the record is not: the record is a
        residual branch, and the block's sum (the residual stream) is judged. A normalisation's
        own output is always judged, unless its weight is a gate (zero-init residual)."""
        if record.name == "<root>":
            return None
        if is_norm(record) and not any(module_path_of_name(g) == module_path(record) for g in self.gates()):
            return None
        for parent in ancestors(module_path(record)):
            for out in self.by_module.get(parent, ()):
                if sorted(out.shape) == sorted(record.shape) and self._stream_healthy(out, low, high):
                    return out
        return None

    def _stream_healthy(self, out, low, high) -> bool:
        """A block output (the residual stream) is healthy when its std is within low..high, or
        when the normalisation it goes into next restores unit scale (std 0.5..2: a pre-norm
        transformer's stream, GPT-2's starts at std 0.03 and each block's LayerNorm reads it;
        a stream so small that the norm's epsilon swamps it comes out below); never on the word
        of a normalisation that produced it."""
        if self._normalisation_output(out):
            return False
        if low <= float(out.stats.get("std", 0.0)) <= high:
            return True
        norm = self.normaliser(out)
        return norm is not None and RESTORED[0] <= float(norm.stats.get("std", 0.0)) <= RESTORED[1]

    def _normalisation_output(self, record) -> bool:
        """The record is a normalisation's output under its container's name (GPT-2's model
        output is ``ln_f``'s): a final norm rescales whatever reaches it, unless the values are
        so small that its epsilon dominates, so it vouches for no branch inside."""
        i = self.position.get(record.index)
        if i is None:
            return False
        for earlier in reversed(self.forward[:i]):
            if earlier.shape != record.shape or earlier.stats != record.stats:
                return False
            if is_norm(earlier):
                return True
        return False

    def rescaled_pool(self, record, low, high):
        """The reader of a global pooling output (one value per sample and channel) when its std
        is within low..high: the pooled means of a normalised map are small by design."""
        op = op_name(record)
        spatial = record.shape[2:] if len(record.shape) >= 3 else ()
        if "pool" not in op or not ("global" in op or (spatial and all(d == 1 for d in spatial))):
            return None
        after = self.consumer(record)
        if after is not None and low <= float(after.stats.get("std", 0.0)) <= high:
            return after
        return None

    def gate_computed(self, record):
        """The sigmoid/softmax gate that the record is computed into, within its own module (a
        squeeze-excite's reduce -> act -> expand -> sigmoid), or None: small values there only
        open the gate half-way, which is the design; the gated output is judged."""
        parent = module_path_of_name(module_path(record))
        if not parent:
            return None
        current = record
        for _ in range(GATE_CHAIN):
            current = self.consumer(current)
            if current is None or not inside(module_path(current), parent):
                return None
            if op_name(current) in GATE_OPS:
                return current
        return None

    def module_output(self, param):
        """The forward record of the module a parameter belongs to (first call)."""
        outputs = self.by_module.get(module_path(param), ())
        return outputs[0] if outputs else None

    def gates(self) -> dict:
        """{gate parameter: residual block} at the analysed step: 1-D scales within +-1e-4
        (a zero-initialised norm weight, a layer scale) inside a block whose output still
        carries a signal (std above 1e-3, varying across samples). A zeroed scale with no
        residual around it (a stem BatchNorm) is no gate: everything after it is constant,
        and it stays a bug."""
        if self._gates is None:
            self._gates = {}
            for p in self.ctx.records("param"):
                if not (is_float_record(p) and len(p.shape) == 1 and p.numel and _is_scale(p)):
                    continue
                if max(abs(float(p.stats["min"])), abs(float(p.stats["max"]))) > GATE_SCALE:
                    continue
                block = self._signal_carrier(module_path(p))
                if block:
                    self._gates[p.name] = block
        return self._gates

    def _signal_carrier(self, path):
        """The module itself (a block holding its layer scale) or its nearest ancestor whose
        output carries a signal (``<root>``, the model's output, is no module path's ancestor)."""
        for candidate in [path, *ancestors(path)]:
            for out in self.by_module.get(candidate, ()):
                if float(out.stats.get("std", 0.0)) > CARRIER_STD and varies_across_samples(out):
                    return candidate
        return None

    def in_forward_order(self, param_names) -> list:
        """Parameter names ordered by where their module runs in the forward pass."""
        def position(name):
            outputs = self.by_module.get(module_path_of_name(name), ())
            return self.position.get(outputs[0].index, len(self.forward)) if outputs else len(self.forward)
        return sorted(param_names, key=lambda n: (position(n), n))

    def gate_of(self, param_name: str):
        """The gate whose block holds this parameter (None when not behind one)."""
        path = module_path_of_name(param_name)
        for gate, block in self.gates().items():
            if inside(path, block):
                return gate
        return None


def structure_of(ctx: CheckContext) -> Structure:
    """The context's Structure, built once per analysed step and shared by the checks."""
    key = ("structure", ctx.step)
    if key not in ctx._by_step:
        ctx._by_step[key] = Structure(ctx)
    return ctx._by_step[key]


def _is_scale(p) -> bool:
    """A norm weight (role weight of a 1-D parameter) or a layer scale (timm and Keras name it
    ``gamma``, Hugging Face ``layer_scale_parameter``)."""
    leaf = re.split(r"[./]", p.name)[-1].lower()
    return role(p) == "weight" or "scale" in leaf or leaf == "gamma"


def module_path_of_name(name: str) -> str:
    for sep in ("/", "."):
        if sep in name:
            return name.rsplit(sep, 1)[0]
    return ""


def _affine_per_channel(x, y, axis) -> bool:
    """y is, channel by channel, an affine function of x (BatchNorm: statistics over the other
    axes) or of x standardised over its last axis (LayerNorm)."""
    if x.shape != y.shape or x.ndim < 2:
        return False
    last = (x - x.mean(axis=-1, keepdims=True)) / (x.std(axis=-1, keepdims=True) + 1e-12)
    return any(_correlated(np.moveaxis(a, ax, 0).reshape(x.shape[ax], -1),
                           np.moveaxis(y, ax, 0).reshape(x.shape[ax], -1))
               for a, ax in ((x, axis), (last, x.ndim - 1)))


def _correlated(a, b) -> bool:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na, nb = np.sqrt((a * a).sum(axis=1)), np.sqrt((b * b).sum(axis=1))
    live = nb > 1e-6 * (nb.max() + 1e-30)          # a zero-init channel (weight 0) is constant
    if not live.any() or (na[live] == 0).any():
        return False
    corr = np.abs((a[live] * b[live]).sum(axis=1)) / (na[live] * nb[live])
    return bool(corr.min() > AFFINE_CORRELATION)


def varies_across_samples(record) -> bool:
    """The record carries a signal: values differ between the samples of the batch (a constant
    map, or one repeated for every sample, carries none). Statistics-only: std > 0."""
    if not float(record.stats.get("std", 0.0)) > 0:
        return False
    if not record.stored or len(record.shape) < 2 or record.shape[0] < 2:
        return True
    data = np.asarray(record.read())
    return not np.array_equal(data, np.broadcast_to(data[:1], data.shape))
