"""The torch adapter's ``record``: a model's per-module (or per-op) outputs, their gradients,
the loss, parameters, parameter gradients and buffers into a tracediff trace.

    from tracediff.adapters import torch as tdt
    out = tdt.record(model, x, "ref.h5", loss_fn=lambda out: F.cross_entropy(out, y))
    with tdt.recording(model, "train.h5", every=10) as session:   # a user's own loop
        ...

Nothing is patched globally: hooks and the op mode live only for the call (or the ``with``
block) and are removed afterwards, also when the model raises. See docs/torch.md.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from tracediff.errors import TraceDiffError

from .capture import Capture
from .distributed import data_parallel, run_and_record
from .meta import tensor_meta
from .recording import model_loss, model_loss_meta
from .select import Selection
from .session import FLUSH_EVERY, check_level, open_recorder, original_module
from .structure import split_inputs

def record(model, inputs, path, loss_fn=None, *, level="module", include=None, exclude=None,
           kinds=None, values=True, overwrite=False, dims=None, seed=None, model_name=None,
           params=True, flush_every=FLUSH_EVERY, background=None, loss_meta=None, shards=None,
           batches=False):
    """Run ``model`` once on ``inputs`` and write its trace to ``path``; returns the output.

    ``inputs``: a tensor, a tuple/list of positional arguments or a dict of keyword arguments.
    With ``loss_fn(output) -> scalar`` (and autograd enabled) the loss is backpropagated and
    gradients are recorded; without it, or under ``torch.no_grad()``, forward only.
    ``batches=True``: ``inputs`` is an iterable of such inputs (a DataLoader, a list of
    batches): the model runs on each, its records carry the batch's ``batch_index`` (parameters
    are recorded with the first batch only), and the list of outputs is returned.
    ``flush_every``: records between index flushes; a Python exception still closes the trace
    with every record, but a hard crash (killed process) loses up to that many. 1 = each record
    durable as it is written (slower, see docs/benchmarks.md).
    ``background``: write CPU tensors from a writer thread (each copied into a reused staging
    buffer first) while the model runs on. None (default): for full tensors when torch leaves a
    CPU free. GPU tensors always go through the thread. See docs/torch.md.
    Under torch.distributed ``path`` is a folder or a ``{rank}`` template: each rank writes its
    own file; ``shards`` declares placements of plain tensors by record-name glob
    (``{"mlp.up": "Shard(-1)", "mlp.down": "Partial()"}``); see docs/torch.md "Distributed".
    """
    if loss_meta is not None and not isinstance(loss_meta, dict):
        raise TraceDiffError(f"loss_meta must be a dict such as {{'ignore_index': -100, 'pad_id': 0}}, "
                             f"got {type(loss_meta).__name__}")
    wrapper, module = run_and_record(model)
    module, compiled = original_module(module)
    runner = wrapper or module
    check_level(level)
    selection = Selection(include, exclude, kinds)
    if batches and (isinstance(inputs, (torch.Tensor, Mapping)) or not isinstance(inputs, Iterable)):
        raise TraceDiffError(
            f"record(batches=True) takes an iterable of batches (a DataLoader, a list of inputs), "
            f"got {type(inputs).__name__}: pass a list of them, or batches=False for one input")
    grads = loss_fn is not None and torch.is_grad_enabled()
    recorder, writer = open_recorder(
        module, path, values=values, level=level, compiled=compiled, overwrite=overwrite,
        dims=dims, seed=seed, model_name=model_name, flush_every=flush_every,
        background=background, shards=shards, data_parallel=data_parallel(wrapper, module))
    capture = Capture(module, writer, selection, level=level, grads=grads)
    complete = False
    try:
        if batches:
            output = []
            for index, batch in enumerate(inputs):
                writer.drain()            # the previous batch's records keep their index
                recorder.batch(index)
                output.append(_run(module, runner, capture, writer, selection, batch, loss_fn, grads,
                                   loss_meta, params and index == 0))
        else:
            output = _run(module, runner, capture, writer, selection, inputs, loss_fn, grads,
                          loss_meta, params)
        writer.close()
        complete = True
    finally:
        capture.detach()
        try:
            if not complete:  # keep what was written before the failure; never mask it
                writer.close(raise_errors=False)
        finally:
            recorder.close(complete=complete)
    return output


def _run(module, runner, capture, writer, selection, inputs, loss_fn, grads, loss_meta, params):
    """One forward (and backward) of ``module`` on ``inputs``, run by ``runner`` (``module``
    or its data-parallel wrapper), recorded; returns the output."""
    args, kwargs = split_inputs(inputs)
    earlier = {}
    capture.start()
    capture.inputs(args, kwargs)
    capture.attach()
    try:
        try:
            if capture.mode is not None:
                with capture.mode:
                    output = runner(*args, **kwargs)
            else:
                output = runner(*args, **kwargs)
        finally:
            capture.detach_modules()
        if loss_fn is not None:
            loss = _scalar_loss(loss_fn(output))
            if selection.wants("loss", "loss"):
                own = model_loss_meta(module) if model_loss(output) is loss else {}
                meta = {"loss_fn": _loss_name(loss_fn), **own, **_loss_meta(loss_fn), **(loss_meta or {})}
                writer.write("loss", "loss", loss, **meta, **tensor_meta(loss),
                             **capture.consumed([loss]))
            if grads and loss.requires_grad:
                earlier = _set_aside_grads(module)
                loss.backward()
        if params:
            capture.parameters(grads=grads)
    finally:
        _accumulate(earlier)
    return output


def _scalar_loss(loss):
    if not isinstance(loss, torch.Tensor):
        raise TraceDiffError(
            f"loss_fn returned {type(loss).__name__}, not a tensor: return the scalar loss tensor "
            "(e.g. F.cross_entropy(out, y))")
    if loss.numel() != 1:
        raise TraceDiffError(
            f"loss_fn returned a tensor of shape {list(loss.shape)}: it must be a scalar; "
            "reduce it (.mean() or .sum())")
    return loss


def _set_aside_grads(module) -> dict:
    """Clear the ``.grad`` left by earlier backward passes, so that ``param_grad`` records this
    loss's gradient alone; ``_accumulate`` adds them back as a plain run would have."""
    earlier = {}
    for p in module.parameters():
        if p.grad is not None:
            earlier[p] = p.grad
            p.grad = None
    return earlier


def _accumulate(earlier: dict):
    for p, grad in earlier.items():
        if p.grad is not None:
            grad.add_(p.grad)  # what autograd's AccumulateGrad does into an existing .grad
        p.grad = grad


def _loss_meta(loss_fn) -> dict:
    """``ignore_index`` of the torch loss module (nn.CrossEntropyLoss, nn.NLLLoss) that loss_fn
    is or calls from its closure (``lambda out: criterion(out, y)``)."""
    cells = [c.cell_contents for c in (getattr(loss_fn, "__closure__", None) or ())
             if _filled(c)]
    for candidate in (loss_fn, *cells):
        ignore = getattr(candidate, "ignore_index", None)
        if isinstance(ignore, int) and isinstance(candidate, torch.nn.Module):
            return {"ignore_index": int(ignore)}
    return {}


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:   # a closure variable not assigned yet
        return False
    return True


def _loss_name(loss_fn) -> str:
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)
