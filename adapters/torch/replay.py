"""Replay of a torch model: every module run on the reference's values of what it consumes.

One forward pass of the whole model, without autograd and with dropout off (it differs by
design), every other module in the mode it was recorded in, with a forward pre-hook on every
module: a tensor argument that is the output of another module in this pass
(or a model input) is replaced by the reference's value of the record it pairs with, so the
module computes its output from the reference's inputs. Its output is its *local* result: its
difference from the reference's output is the module's own error, not the error it inherited.
Keyword arguments are substituted the same way, so modules called with masks or positions
(attention) keep them. A tensor made by a functional op between two modules (``x.flatten(1)``,
``out += identity``) has no record: it is computed from substituted values, so the consumer's
local error then includes that op.

Running buffers (BatchNorm statistics) are restored afterwards, and the training flags too.

Backward: with ``gradients``, the same pass keeps autograd on, each substituted tensor a
fresh leaf, and each module call's vector-Jacobian product with the reference's dL/d(its
output) gives the parameter gradients that call contributes (summed over calls: the
parameters' local gradients) and its contribution to dL/d of the records it consumed
(``replay_vjp``).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from .capture import ROOT
from .convert import to_numpy
from .replay_vjp import Backward
from .session import original_module
from .structure import is_tensor, named_inputs, named_tensors, split_inputs
from tracediff.structure import with_leaves


def replay(model, inputs, reference, wanted, *, gradients=False, arguments=None,
           input_grads=None):
    """``({(record name, call): local output}, {parameter name: local gradient})`` as NumPy,
    for the forward records in ``wanted``; the gradients only with ``gradients``, and then
    ``input_grads`` (a dict) receives ``{(record name, call): ([consumers], local dL/d)}`` of
    the records whose every consumer was replayed (``replay_vjp``). With
    ``arguments`` (a dict), the substituted arguments of each ``(module path, call)`` key it
    holds are stored in it as ``(args, kwargs)`` of tensors (a one-layer repro's inputs).

    ``reference(kind, name, call) -> np.ndarray | None`` gives the reference's value of a
    candidate record, already in the candidate's layout, or None where it has none; the pass
    uses it for every tensor a module consumes, and for dL/d(output) in the backward.
    """
    module, _ = original_module(model)
    args, kwargs = split_inputs(inputs)
    produced = {}        # id(tensor) -> ((kind, record name, call), version when recorded)
                         # ``alive`` keeps the ids unique
    alive = []
    handed = {}          # id(tensor handed on in place of a module's output) -> its value
    calls = defaultdict(int)
    local = {}
    backward = Backward() if gradients else None

    def source_of(t):
        """The record ``t`` holds the value of; None once an in-place op changed it since
        (``out += identity`` on a block's output: it no longer holds the recorded value)."""
        found = produced.get(id(t)) if isinstance(t, torch.Tensor) else None
        if found is None or found[1] != t._version:
            return None
        return found[0]

    def reference_of(t):
        """``(source, the reference's value)`` of the record ``t`` holds, or ``(None, None)``."""
        source = source_of(t)
        if source is None:
            return None, None
        value = handed.get(id(t))
        if value is None:
            value = reference(*source)
        if value is None or tuple(value.shape) != tuple(t.shape):
            return None, None
        return source, value

    def as_tensor(source, value, like):
        # with the backward, a float value becomes a leaf the module only gets a clone of
        # (Backward.substitute): the leaf may share the reference's array
        shared = backward is not None and value.dtype.kind == "f" and value.flags.writeable
        value = torch.from_numpy(value if shared else value.copy()).to(dtype=like.dtype,
                                                                      device=like.device)
        if backward is not None and value.is_floating_point():
            value = backward.substitute(source, value)
        produced[id(value)] = (source, value._version)
        alive.append(value)
        return value

    def substituted(t):
        # a module handing it on to a child: the child gets a fresh copy of its own
        source, value = reference_of(t)
        return t if value is None else as_tensor(source, value, t)

    def handed_on(t):
        """What the module's caller gets instead of ``t``: the reference's value of the record
        ``t`` holds, so that code between modules (attention's split, softmax and matmul
        between ``c_attn`` and ``c_proj``; ``out += identity``) computes from the reference's
        values too, and a wrong module's output reaches no other module's inputs."""
        if id(t) in handed:     # a container handing on its child's output: replaced already
            return t
        source, value = reference_of(t)
        if value is None:
            return t
        out = as_tensor(source, value, t)
        handed[id(out)] = value
        return out

    def pre_hook(sub, hook_args, hook_kwargs):
        hook_args = tuple(substituted(a) for a in hook_args)
        hook_kwargs = {k: substituted(v) for k, v in hook_kwargs.items()}
        if arguments is not None:
            key = (paths[sub], calls[paths[sub]])
            if key in arguments:
                arguments[key] = (hook_args, hook_kwargs)
        return hook_args, hook_kwargs

    def forward_hook(path):
        name = path or ROOT

        def hook(sub, __, output):
            if path in random:    # off, it returns its input; recorded, it made a new tensor
                output = with_leaves(output, lambda t: t.view_as(t), is_tensor)
            call = calls[name]
            calls[name] += 1
            named = list(named_tensors(output, name))
            for record_name, t in named:
                produced[id(t)] = (("forward", record_name, call), t._version)
                alive.append(t)
                if (record_name, call) in wanted:
                    local[(record_name, call)] = to_numpy(t).copy()
                if backward is not None:
                    backward.output(record_name, call, t)
            if backward is not None:
                backward.called(path, name, call, named)
            return with_leaves(output, handed_on, is_tensor)
        return hook

    for name, t in named_inputs(args, kwargs):
        produced[id(t)] = (("input", name, 0), t._version)
        if backward is not None:
            backward.input(name, 0, t)
    paths = {sub: path or ROOT for path, sub in module.named_modules()}
    modes = {m: m.training for m in module.modules()}
    random = {path for path, sub in module.named_modules()   # dropout the recording ran
              if isinstance(sub, torch.nn.modules.dropout._DropoutNd) and sub.training and sub.p > 0}
    handles = []
    grads = {}
    with kept_buffers(module):
        try:
            _run(module, args, kwargs, handles, pre_hook, forward_hook, gradients)
            if backward is not None:
                found = backward.run(module, reference, grads, random=random)
                if input_grads is not None:
                    input_grads.update(found)
        finally:
            for handle in handles:
                handle.remove()
            for m, training in modes.items():
                m.training = training
    return local, grads


def _run(module, args, kwargs, handles, pre_hook, forward_hook, gradients):
    """The substituted forward pass: hooks on every module, dropout off, autograd only for
    the parameter gradients."""
    try:
        for path, sub in module.named_modules():
            handles.append(sub.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(sub.register_forward_hook(forward_hook(path)))
            if isinstance(sub, torch.nn.modules.dropout._DropoutNd):
                sub.eval()
        with torch.set_grad_enabled(gradients):
            module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


@contextlib.contextmanager
def kept_buffers(model):
    """A context in which ``model``'s buffers (BatchNorm running statistics) may change: they
    are put back on leaving, so a replay leaves the user's model as it found it."""
    module, _ = original_module(model)
    saved = {name: b.detach().clone() for name, b in module.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in saved:
                    b.copy_(saved[name])


def as_inputs(values):
    """The reference's input records (``[(name, array)]``) as the ``inputs`` torch's ``record``
    takes: one tensor, positional tensors ``input:0, input:1...``, or keywords ``input:<key>``."""
    tensors = [(name, torch.from_numpy(value.copy())) for name, value in values]
    if len(tensors) == 1:
        return tensors[0][1]
    keys = [name.partition(":")[2] for name, _ in tensors]
    if all(key.isdigit() for key in keys):
        return tuple(t for _, t in tensors)
    return {key: t for key, (_, t) in zip(keys, tensors)}
