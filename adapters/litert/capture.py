"""One run of the LiteRT interpreter with every tensor kept, and the delegated run it stands for.

The default delegate (XNNPACK) takes over whole partitions of the graph and leaves their
intermediate tensors undefined, so the recorded run uses the built-in kernels without it
(``BUILTIN_WITHOUT_DEFAULT_DELEGATES``) and ``experimental_preserve_all_tensors``; the final
outputs of the default, delegated interpreter are compared with it (``delegate_difference``).
"""
from __future__ import annotations

import warnings

import numpy as np

from ...errors import TraceDiffError, first_line


def interpreter(model_bytes, preserve=True, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if preserve else OpResolverType.AUTO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            it = Interpreter(model_content=model_bytes, experimental_op_resolver_type=resolver,
                             experimental_preserve_all_tensors=preserve, num_threads=num_threads)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise TraceDiffError(f"LiteRT cannot load the model: {first_line(exc)}") from None
    return it


def run(it, feeds):
    """Feed ``{tensor index: array}`` (resizing dynamic inputs) and invoke."""
    details = {d["index"]: d for d in it.get_input_details()}
    resized = False
    for index, array in feeds.items():
        if list(details[index]["shape"]) != list(array.shape):
            it.resize_tensor_input(index, list(array.shape))
            resized = True
    if resized:
        it.allocate_tensors()
    try:
        for index, array in feeds.items():
            it.set_tensor(index, array)
        it.invoke()
    except (ValueError, RuntimeError) as exc:
        raise TraceDiffError(f"LiteRT failed while running the model: {first_line(exc)}") from None


def ops(it) -> list:
    """Subgraph 0's ops in execution order: ``[(op name, [input indices], [output indices])]``."""
    out = []
    for op in it._get_ops_details():
        out.append((op["op_name"], [int(i) for i in op["inputs"] if i >= 0],
                    [int(i) for i in op["outputs"] if i >= 0]))
    return out


def value(it, index):
    try:
        return np.array(it.get_tensor(index))
    except ValueError:
        return None      # a tensor without data (an optional input left out)


def delegate_difference(model_bytes, feeds, outputs, num_threads=None) -> dict:
    """``{"max_abs": ..., "outputs": {name: max_abs}}``: how far the default (delegated)
    interpreter's outputs are from the recorded run's (``outputs``: ``{index: (name, array)}``),
    in the stored units (quantization steps for an integer output)."""
    it = interpreter(model_bytes, preserve=False, num_threads=num_threads)
    run(it, feeds)
    per_output = {}
    for index, (name, recorded) in outputs.items():
        delegated = np.asarray(it.get_tensor(index))
        if delegated.shape != recorded.shape or recorded.size == 0:
            per_output[name] = None if delegated.shape != recorded.shape else 0.0
            continue
        per_output[name] = float(np.max(np.abs(delegated.astype(np.float64) - recorded.astype(np.float64))))
    finite = [v for v in per_output.values() if v is not None]
    return {"max_abs": max(finite) if finite else None, "outputs": per_output}
