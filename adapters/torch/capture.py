"""Module-level (and op-level) capture: forward hooks on every module write its outputs, tensor
hooks on those outputs write dL/d(output) during backward, paired with the same call.

Tensor hooks, not full backward hooks: full backward hooks break on in-place ops. A tensor hook
registered before an in-place op still receives the gradient of the value before it.
"""
from __future__ import annotations

from collections import defaultdict

from .dataflow import Dataflow, tensors_in
from .meta import autocast_meta, module_meta, parameter_meta, tensor_meta
from .structure import named_inputs, named_tensors

ROOT = "<root>"


class Capture:
    """Hooks one model for one step at a time; ``detach()`` removes every hook it added."""

    def __init__(self, model, writer, selection, *, level="module", grads=True):
        self.model = model
        self.writer = writer
        self.selection = selection
        self.level = level
        self.grads = grads
        self.busy = False          # set while our own code runs, so the op mode ignores it
        self._calls = defaultdict(int)
        self._stack = []           # op level: (module path, module, per-op counters)
        self._consumed = []        # per module call in progress: the inputs meta of its records
        self.dataflow = Dataflow()
        self._module_handles = []
        self._grad_handles = []
        self.mode = None
        if level == "op":
            from .ops import OpMode
            self.mode = OpMode(self)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        """A new step: call indices and op counters restart."""
        self._calls.clear()
        self._stack = [("", self.model, defaultdict(int))]
        self._consumed.clear()
        self.dataflow.clear(self.model)

    def attach(self):
        """Register forward hooks on every module (and pre-hooks for op naming)."""
        wants_forward = self.selection.wants_kind("forward")
        wants_backward = self.grads and self.selection.wants_kind("backward")
        if not (wants_forward or wants_backward or self.mode is not None):
            return
        for path, module in self.model.named_modules():
            self._module_handles.append(
                module.register_forward_pre_hook(self._pre_hook(path), with_kwargs=True))
            self._module_handles.append(module.register_forward_hook(self._hook(path)))

    def detach_modules(self):
        for handle in self._module_handles:
            handle.remove()
        self._module_handles.clear()

    def detach(self):
        """Remove every module and tensor hook (tensor hooks of a step whose backward never ran
        die with its graph; removing them here keeps nothing of ours on the user's tensors)."""
        self.detach_modules()
        for handle in self._grad_handles:
            handle.remove()
        self._grad_handles.clear()
        self.dataflow.clear()    # autograd nodes it held

    # -- records -----------------------------------------------------------------------------
    def inputs(self, args, kwargs):
        for name, t in named_inputs(args, kwargs):
            meta = tensor_meta(t)
            if self.selection.wants("input", name):
                self.writer.write("input", name, t, **meta)
                self.dataflow.produced(t, {"kind": "input", "name": name, "call": 0})
            if self.grads and t.requires_grad and self.selection.wants("backward", name):
                self._watch_grad(t, name, 0, {"op_type": "input"})

    def outputs(self, module, path, name, output, flow=None):
        """Write every tensor of one module (or op) output; hook it for its gradient."""
        self._write_tensors(output, name, lambda t: module_meta(module, path, t), flow)

    def consumed(self, tensors) -> dict:
        """The dataflow meta of a record made from ``tensors``: ``inputs`` (and
        ``inputs_partial`` when some tensor could not be traced to a record)."""
        edges, complete = self.dataflow.consumed(tensors)
        if not edges and not complete:
            return {}
        return {"inputs": edges} if complete else {"inputs": edges, "inputs_partial": True}

    def _write_tensors(self, output, name, meta_of, flow=None):
        """``forward`` records of the tensors in ``output`` (this call of ``name``) and gradient
        hooks on them, as the selection wants; ``meta_of(tensor)`` is asked only for tensors
        something is kept of. ``flow``: the dataflow meta of this call."""
        call = self._calls[name]
        self._calls[name] += 1
        for record_name, t in named_tensors(output, name):
            forward = self.selection.wants("forward", record_name)
            backward = self.grads and t.requires_grad and self.selection.wants("backward", record_name)
            if not (forward or backward):
                continue
            meta = meta_of(t)
            if forward:
                meta.update(autocast_meta(t.device.type))
                self.writer.write("forward", record_name, t, call=call, **meta, **(flow or {}))
                self.dataflow.produced(t, {"kind": "forward", "name": record_name, "call": call})
            if backward:
                self._watch_grad(t, record_name, call, meta)

    def parameters(self, grads=True, trainable=None):
        """``param`` (and ``param_grad`` where ``.grad`` is set) for every named parameter, then
        the persistent buffers (running_mean/var...) as ``param`` records with their role.
        ``trainable`` limits the parameters to those that do (True) or do not (False) require grad."""
        self.busy = True
        try:
            for name, p in self.model.named_parameters():
                if trainable is not None and p.requires_grad != trainable:
                    continue
                self.parameter(name, p, grads)
            persistent = set(self.model.state_dict(keep_vars=True))
            for name, b in self.model.named_buffers():
                if name in persistent:
                    self.parameter(name, b, grads=False)
        finally:
            self.busy = False

    def parameter(self, name, p, grads=True):
        module_path, _, attribute = name.rpartition(".")
        module = self.model.get_submodule(module_path)
        meta = parameter_meta(module, module_path, attribute, p)
        if self.selection.wants("param", name):
            self.writer.write("param", name, p, **meta)
        if grads and p.grad is not None and self.selection.wants("param_grad", name):
            meta.update(tensor_meta(p.grad))
            self.writer.write("param_grad", name, p.grad, **meta)

    # -- hooks -------------------------------------------------------------------------------
    def _hook(self, path):
        name = path or ROOT

        def hook(module, args, output):
            self.busy = True
            try:
                if self.mode is not None and path and len(self._stack) > 1:
                    self._stack.pop()
                flow = self._consumed.pop() if self._consumed else None
                self.outputs(module, path, name, output, flow)
            finally:
                self.busy = False
        return hook

    def _pre_hook(self, path):
        def pre_hook(module, args, kwargs):
            if self.mode is not None and path:
                self._stack.append((path, module, defaultdict(int)))
            self.busy = True
            try:
                self._consumed.append(self.consumed(tensors_in(args, kwargs)))
            finally:
                self.busy = False
        return pre_hook

    def _watch_grad(self, t, name, call, meta):
        meta = dict(meta)

        def on_grad(grad):
            self.writer.write("backward", name, grad, call=call, **{**meta, **tensor_meta(grad)})
        self._grad_handles.append(t.register_hook(on_grad))

    # -- op level ----------------------------------------------------------------------------
    def op(self, op_name, output, args=(), kwargs=None):
        """One op's output, named ``<module path>/<op>#<n>`` with n counted per module call and
        op, so an op inserted in one module renames nothing elsewhere."""
        path, module, counters = self._stack[-1] if self._stack else ("", self.model, defaultdict(int))
        n = counters[op_name]
        counters[op_name] = n + 1
        name = f"{path or ROOT}/{op_name}#{n}"
        self.busy = True
        try:
            flow = self.consumed(tensors_in(args, kwargs or {}))
            self._write_tensors(output, name, lambda t: {
                "op_type": op_name, "module": path, "training": bool(module.training),
                **tensor_meta(t)}, flow)
        finally:
            self.busy = False
