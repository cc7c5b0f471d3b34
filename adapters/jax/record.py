"""The JAX adapter's ``record``: one forward pass capturing every submodule's output, then one
``jax.grad`` call for the loss, the parameter gradients and dL/d(each output) through zero
perturbations (capture.py). Both passes are jitted when the function given is.

    from tracediff.adapters import jax as tdj
    out = tdj.record(model, x, "flax.h5", loss_fn=lambda out: loss(out, y))            # NNX
    out = tdj.record(module, x, "linen.h5", params=variables, loss_fn=...)            # Linen
    out = tdj.record(jax.jit(f), x, "f.h5", params=params, loss_fn=...)             # function

See docs/jax.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import TraceDiffError
from ...recorder import Recorder
from ...select import kept
from . import meta as jmeta
from ...structure import named_leaves
from .capture import ROOT, Taps, active, is_array, zeros_for
from .inputs import jitted, kind_of, named_inputs, run_error, split_inputs
from .models import RUNNERS, flat_named


def record(model, inputs, path, loss_fn=None, *, params=None, rngs=None, mutable=None,
           jit=None, values=True, overwrite=False, dims=None, seed=None, model_name=None,
           include=None, exclude=None):
    """Run ``model`` once on ``inputs`` and write its trace to ``path``; returns the output.

    ``model``: a Flax NNX module, a Flax Linen module (``params`` = its variables from
    ``init``) or a function ``fn(params, *inputs)`` over a params pytree (``jax.jit``-compiled
    or not). ``inputs``: an array, a tuple/list of positional inputs or a dict of keyword
    inputs. ``loss_fn(output) -> scalar`` adds the loss, backward records and parameter
    gradients. ``rngs``, ``mutable``: Linen ``apply``'s (dropout keys, and the collections a
    training step updates, recorded as they are after the run). ``jit``: run both passes
    under ``jax.jit`` (default: when ``model`` is a jitted function). ``include``/``exclude``:
    glob patterns on record names.
    """
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else exclude
    kind = kind_of(model)
    runner = RUNNERS[kind](model, params, rngs, mutable)
    args, kwargs = split_inputs(inputs)
    use_jit = jitted(model) if jit is None else bool(jit)
    what = f"{kind} {runner.name}"
    taps = Taps()

    def forward(trainable, args, kwargs):
        named = named_inputs(args, kwargs)
        taps.mark_inputs(named)
        with active(taps):
            output = runner.run(trainable, args, kwargs)
        taps.note_input_layouts(named)
        return output, dict(taps.values), runner.updates

    try:
        output, captured, updates = (jax.jit(forward) if use_jit else forward)(
            runner.trainable, args, kwargs)
    except TraceDiffError:
        raise
    except Exception as exc:  # noqa: BLE001 - JAX and Flax raise many types; one line each
        raise run_error(what, args, kwargs, exc) from exc
    if use_jit:
        output = _uninstrumented(runner, args, kwargs)
        for name, leaf in named_leaves(output, ROOT, is_array):
            captured[f"{name}#0"] = leaf
    loss = param_grads = output_grads = None
    if loss_fn is not None:
        loss, param_grads, output_grads = _gradients(
            runner, loss_fn, args, kwargs, zeros_for(captured), use_jit)
    if updates:
        runner.updated(updates)

    rec = Recorder(path, framework="jax", dims=dims, model=model_name or runner.name, seed=seed,
                   framework_version=_versions(),
                   overwrite=overwrite, values=values, flush_every=64,
                   meta={**jmeta.trace_meta(jax), "api": runner.api, "jit": use_jit})
    try:
        _write(rec, taps, captured, args, kwargs, runner, loss, param_grads, output_grads,
               include, exclude)
    except BaseException:
        rec.close(complete=False)
        raise
    rec.close()
    return output


def _versions() -> str:
    """``jax 0.10.2 / flax 0.12.8``; a plain function needs no Flax installed."""
    try:
        import flax
    except ImportError:
        return f"jax {jax.__version__}"
    return f"jax {jax.__version__} / flax {flax.__version__}"


def _uninstrumented(runner, args, kwargs):
    """The compiled function's own output. XLA compiles the recording forward, which also
    returns every intermediate, with other fusions, so its final output can differ in the last
    bit; the output returned and recorded as ``<root>`` is the plain compiled run's."""
    compiled = getattr(runner, "compiled", lambda: None)() or jax.jit(
        lambda trainable, args, kwargs: runner.plain(trainable, args, kwargs))
    if compiled is getattr(runner, "given", None):
        return compiled(runner.trainable, *args, **kwargs)
    return compiled(runner.trainable, args, kwargs)


def _gradients(runner, loss_fn, args, kwargs, zeros, use_jit):
    def objective(trainable, perturbs, args, kwargs):
        with active(Taps(perturbs)):
            output = runner.run(trainable, args, kwargs)
        return _scalar_loss(loss_fn(output))

    grad = jax.value_and_grad(objective, argnums=(0, 1))
    (loss, (param_grads, output_grads)) = (jax.jit(grad) if use_jit else grad)(
        runner.trainable, zeros, args, kwargs)
    return loss, param_grads, output_grads


def _scalar_loss(loss):
    if not isinstance(loss, jax.Array):
        raise TraceDiffError(
            f"loss_fn returned {type(loss).__name__}, not a JAX array: return the scalar loss "
            "computed with jax.numpy from the model output")
    if loss.size != 1:
        raise TraceDiffError(
            f"loss_fn returned an array of shape {tuple(loss.shape)}: it must be a scalar; "
            "reduce it (.mean() or .sum())")
    return jnp.reshape(loss, ())


def _write(rec, taps, captured, args, kwargs, runner, loss, param_grads, output_grads,
           include, exclude):
    for name, value in named_inputs(args, kwargs):
        layout = taps.input_layouts.get(name)
        rec.input(name, np.asarray(value), framework_dtype=str(value.dtype),
                  **({"layout": layout} if layout else {}))
    wanted = [t for t in taps.tapped if kept([t.name], include, exclude)]
    for t in wanted:
        rec.forward(t.name, np.asarray(captured[t.key]), call=t.call, **t.meta)
    if loss is not None:
        rec.loss(np.asarray(loss))
        for t in reversed(wanted):
            if t.key in output_grads:
                rec.backward(t.name, np.asarray(output_grads[t.key]), call=t.call, **t.meta)
    grads = dict(flat_named(param_grads)) if param_grads is not None else {}
    for trainable, named in ((True, flat_named(runner.trainable)), (False, runner.frozen_named())):
        for name, value in named:
            module, _, attribute = name.rpartition(".")
            if not kept([name, module], include, exclude):
                continue
            meta = jmeta.param_meta(module, attribute, value, taps.modules.get(module),
                                    trainable=trainable)
            grad = grads.get(name) if trainable else None
            rec.param(name, np.asarray(value), grad=None if grad is None else np.asarray(grad),
                      **meta)
