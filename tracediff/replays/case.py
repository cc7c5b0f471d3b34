"""Running a one-layer repro written by ``tracediff extract`` (the pytest file calls
``check_case``): the layer, loaded as the case says for its framework, run on the stored inputs
and compared with the reference's output."""
from __future__ import annotations

import os

import numpy as np

from ..compare.metrics import compare
from ..trace import open_trace


def check_case(path) -> None:
    """Run the case's layer on its stored inputs (a torch or Keras layer of the candidate
    given the stored parameters, the one-layer ``.onnx`` beside the case in onnxruntime, or a
    NumPy port's layer) and compare with the reference's output; AssertionError naming the
    local error when they differ beyond the stored tolerance."""
    with open_trace(path) as case:
        expected = case.get("expected")
        meta = expected.meta
        inputs = [r for r in case if r.kind == "input"]
        args = [_argument(r) for r in inputs if "keyword" not in r.meta]
        kwargs = {r.meta["keyword"]: _argument(r) for r in inputs if "keyword" in r.meta}
        params = [(r.name, r.read().copy(), r.meta) for r in case if r.kind == "param"]
        run = {"tensorflow": _run_keras, "onnx": _run_onnx,
               "numpy": _run_numpy}.get(meta.get("framework"), _run_torch)
        got = run(meta, args, kwargs, params, os.path.dirname(os.fspath(path)))
        want = expected.read()
    result = compare(np.asarray(got, np.float64), want.astype(np.float64), meta["rtol"],
                     meta["atol"])
    stats = result.stats()
    assert result.passed, (
        f"{meta['layer']} of {meta['candidate']} on the reference's inputs differs from the "
        f"reference: local rel_l2 {stats['rel_l2']:.3g}, max_abs {stats['max_abs']:.3g} "
        f"(rtol {meta['rtol']:.3g}, atol {meta['atol']:.3g})")


def _argument(record):
    """A stored input as an array, or the plain number or None it was."""
    if record.meta.get("none"):
        return None
    if record.meta.get("constant"):
        return record.read().item()
    return record.read().copy()


def _run_torch(meta, args, kwargs, params, folder):
    import torch

    from .candidate import load_candidate

    model = load_candidate(meta["candidate"], "candidate")
    layer = model.get_submodule("" if meta["layer"] == "<root>" else meta["layer"])

    def tensor(value):
        return torch.from_numpy(value) if isinstance(value, np.ndarray) else value

    layer.load_state_dict({name: torch.from_numpy(value) for name, value, _ in params},
                          strict=False)
    layer.train(bool(meta.get("training")))
    for sub in layer.modules():   # as replay runs it: dropout off
        if isinstance(sub, torch.nn.modules.dropout._DropoutNd):
            sub.eval()
    with torch.no_grad():
        output = layer(*map(tensor, args), **{k: tensor(v) for k, v in kwargs.items()})
    return output.detach().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)


def _run_keras(meta, args, kwargs, params, folder):
    import tensorflow as tf

    from ..adapters.tensorflow.capture import layer_paths, structured
    from .candidate import load_candidate

    model = load_candidate(meta["candidate"], "candidate")
    layer = dict(layer_paths(model))[meta["path"]]
    if params:
        layer.set_weights([value for _, value, m in sorted(params, key=lambda p: p[2]["position"])])

    def tensor(value):
        return tf.convert_to_tensor(value) if isinstance(value, np.ndarray) else value

    output = layer(*map(tensor, args), **{k: tensor(v) for k, v in kwargs.items()})
    return dict(structured(output))[meta.get("output", "")].numpy()


def _run_onnx(meta, args, kwargs, params, folder):
    import onnxruntime as ort

    from ..adapters.onnx.extract import OUTPUT

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.path.join(folder, meta["model"]), options,
                                   providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {f"arg:{i}": value for i, value in enumerate(args)})[0]


def _run_numpy(meta, args, kwargs, params, folder):
    from .candidate import load_candidate
    from .extract import numpy_layers

    layer = numpy_layers(load_candidate(meta["candidate"], "candidate"))[meta["layer"]]
    return np.asarray(getattr(layer, "forward", layer)(*args, **kwargs))
