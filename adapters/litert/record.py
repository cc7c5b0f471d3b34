"""LiteRT adapter: every tensor of one interpreter run of a ``.tflite`` model.

``record("model.tflite", {"image": x}, "litert.h5")`` writes an ``input`` record per model
input, a ``param`` record per float or quantized constant (weights, biases; plain integer
constants such as shapes are left out), and a ``forward`` record per op output in execution
order, each with its op type, fused activation, layout, the Keras layer it belongs to
(``module``), the records it read (``inputs``) and, for a quantized tensor, ``scale`` and
``zero_point``. Quantized tensors are stored as they are (int8, int16). See docs/litert.md.
"""
from __future__ import annotations

import numpy as np

from ...recorder import Recorder
from . import capture
from .inputs import check_feeds, input_names, load_model
from .meta import (activation_layout, folds_batchnorm, fused_activations, module_decoder,
                   param_meta, passes_through, quantization, readable_names, value_first)

__all__ = ["record"]


def record(model, inputs, path, *, overwrite=False, values=True, num_threads=None,
           compare_delegate=True) -> None:
    """Record one run of ``model`` (a ``.tflite`` path or its bytes) on ``inputs`` (a dict of
    input name -> array; the signature's names or the tensor names; a bare array for a model
    with one input) into the trace ``path``.

    ``compare_delegate``: also run the default, delegated interpreter and store how far its
    outputs are from the recorded run's in the trace meta (``delegate_difference``)."""
    import ai_edge_litert

    data, source = load_model(model)
    it = capture.interpreter(data, num_threads=num_threads)
    feeds = check_feeds(it, inputs, source)
    capture.run(it, feeds)
    graph_ops = capture.ops(it)
    details = {d["index"]: d for d in it.get_tensor_details()}
    activations = fused_activations(data)
    activated = {t: activations.get(op_index) for op_index, (_, _, outs) in enumerate(graph_ops)
                 for t in outs}
    located = {i: value_first(d["name"], activated.get(i)) for i, d in details.items()}
    names = readable_names(located)
    decode = module_decoder(list(located.values()))
    inputs_named = input_names(it)
    outputs = {d["index"] for d in it.get_output_details()}

    produced = {t for _, _, outs in graph_ops for t in outs}
    consumers = {}
    for op_type, ins, _ in graph_ops:
        for position, t in enumerate(ins):
            consumers.setdefault(t, []).append((op_type, position))
    constants = [i for i in sorted(consumers) if i not in produced and i not in inputs_named
                 and _is_parameter(details[i])]

    # constants a folded BatchNorm rewrote are not the model's parameters (docs/litert.md)
    folded = {t for op_type, ins, outs in graph_ops
              if outs and folds_batchnorm(op_type, located[outs[0]])
              for t in ins[1:] if t in set(constants)}
    constants = [i for i in constants if i not in folded]
    constant_set = set(constants)
    modules = {}
    for i in constants:
        modules[i] = decode(details[i]["name"])
    for op_type, ins, outs in graph_ops:
        own = [modules.get(t) for t in ins if t in constant_set]
        for t in outs:
            module = decode(located[t])
            if module is None and passes_through(op_type) and ins:
                module = modules.get(ins[0])          # a (de)quantized copy of its input
            if module is None and len(set(m for m in own if m)) == 1:
                module = next(m for m in own if m)   # a graph output: its weights' layer
            elif module is None and not own and ins and details[t]["name"] \
                    and "/" not in details[t]["name"]:
                module = modules.get(ins[0])         # a graph output (the Dense's softmax)
            modules[t] = module

    recorded = {}   # tensor index -> (kind, name)
    run_meta = {"signatures": sorted(it.get_signature_list()), "resolver":
                "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "preserve_all_tensors": True,
                "folded_constants": sorted(details[t]["name"] for t in folded)}
    if compare_delegate:
        run_meta["delegate_difference"] = capture.delegate_difference(
            data, feeds, {t: (names[t], capture.value(it, t)) for t in outputs}, num_threads)
    with Recorder(path, framework="litert", framework_version=f"ai-edge-litert "
                  f"{getattr(ai_edge_litert, '__version__', '?')}", model=source,
                  overwrite=overwrite, values=values, meta=run_meta, flush_every=64) as rec:
        for index, array in feeds.items():
            name = inputs_named[index]
            rec.input(name, array, tflite_tensor=details[index]["name"],
                      **quantization(details[index]))
            recorded[index] = ("input", name)
        for i in constants:
            array = capture.value(it, i)
            if array is None:
                continue
            meta = {"tflite_tensor": details[i]["name"], "module": modules.get(i),
                    **param_meta(consumers[i], array.ndim), **quantization(details[i])}
            if meta["module"] is None:
                meta["module"] = _reader_module(i, graph_ops, modules)
            rec.param(names[i], array, **{k: v for k, v in meta.items() if v is not None})
            recorded[i] = ("param", names[i])
        for op_index, (op_type, ins, outs) in enumerate(graph_ops):
            read = [{"kind": recorded[t][0], "name": recorded[t][1], "call": 0}
                    for t in ins if t in recorded and recorded[t][0] != "param"]
            for t in outs:
                array = capture.value(it, t)
                if array is None:
                    continue
                meta = {"op_type": op_type, "tflite_tensor": details[t]["name"],
                        "module": modules.get(t), "fused_activation": activations.get(op_index),
                        "layout": activation_layout(op_type, array.ndim), "inputs": read,
                        **quantization(details[t])}
                if op_type == "DEQUANTIZE" and ins and quantization(details[ins[0]]).get("scale"):
                    meta["quantization_step"] = float(np.max(quantization(details[ins[0]])["scale"]))
                if t in outputs:
                    meta["graph_output"] = True
                if folds_batchnorm(op_type, located[t]):
                    meta["folded"] = "BatchNormalization"
                rec.forward(names[t], array, **{k: v for k, v in meta.items() if v is not None})
                recorded[t] = ("forward", names[t])


def _is_parameter(details) -> bool:
    """Float constants and quantized ones (int8 weights, int32 biases with a scale)."""
    dtype = np.dtype(details["dtype"])
    return dtype.kind == "f" or bool(details["quantization_parameters"]["scales"].size)


def _reader_module(index, graph_ops, modules):
    """The layer of the first op reading a constant: a parameter belongs to its reader (the
    converter names a bias ``arith.constant``)."""
    for _, ins, outs in graph_ops:
        if index in ins and outs:
            return modules.get(outs[0])
    return None
