"""A ``.tflite`` model's bytes and its inputs: read, checked and named, with one-line errors."""
from __future__ import annotations

import os

import numpy as np

from ...errors import TraceDiffError


def load_model(model):
    """``(bytes, source)`` of a path to a ``.tflite`` file, or of the flatbuffer's bytes."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), "the model"
    if not isinstance(model, (str, os.PathLike)):
        raise TraceDiffError(f"the LiteRT adapter records a .tflite path or its bytes, not a "
                             f"{type(model).__name__}")
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise TraceDiffError(f"{path} does not exist: give the path of a .tflite model")
    with open(path, "rb") as handle:
        data = handle.read()
    if data[4:8] != b"TFL3":
        raise TraceDiffError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier): convert "
                             "the model with tf.lite.TFLiteConverter first")
    return data, path


def input_names(interpreter) -> dict:
    """``{tensor index: name}`` of the model inputs: the serving signature's names (``image``)
    where there is one, else the tensor names."""
    details = interpreter.get_input_details()
    names = {d["index"]: d["name"] for d in details}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        key = next(iter(signatures))
        runner_inputs = interpreter._get_full_signature_list()[key]["inputs"]
        for name, index in runner_inputs.items():
            if index in names:
                names[index] = name
    return names


def check_feeds(interpreter, inputs, source) -> dict:
    """``{tensor index: array}`` for every model input, refusing missing, unknown or mistyped
    ones. ``inputs`` maps input names (signature or tensor names) to arrays; a model with one
    input takes a bare array."""
    details = {d["index"]: d for d in interpreter.get_input_details()}
    names = input_names(interpreter)
    if not isinstance(inputs, dict):
        if len(details) != 1:
            raise TraceDiffError(f"{source} has {len(details)} inputs: give a dict of input "
                                 f"name -> array ({', '.join(names.values())})")
        inputs = {next(iter(names.values())): inputs}
    lookup = {name: index for index, name in names.items()}
    lookup.update({d["name"]: index for index, d in details.items()})
    unknown = [k for k in inputs if k not in lookup]
    if unknown:
        raise TraceDiffError(f"{source} has no input named {unknown[0]!r}: its inputs are "
                             f"{', '.join(names.values())}")
    given = {lookup[k]: v for k, v in inputs.items()}
    missing = [names[i] for i in details if i not in given]
    if missing:
        raise TraceDiffError(f"no value given for input {missing[0]!r} of {source}: give every "
                             f"input ({', '.join(names.values())})")
    feeds = {}
    for index, d in details.items():
        array = np.asarray(given[index])
        if array.dtype != d["dtype"]:
            raise TraceDiffError(
                f"input {names[index]!r} of {source} is {array.dtype} but the model expects "
                f"{np.dtype(d['dtype'])}: convert it first")
        signature = [int(s) for s in d["shape_signature"]]
        if array.ndim != len(signature) or any(
                want != -1 and want != got for want, got in zip(signature, array.shape)):
            raise TraceDiffError(f"input {names[index]!r} of {source} has shape "
                                 f"{list(array.shape)} but the model expects {signature} "
                                 "(-1: any size)")
        feeds[index] = np.ascontiguousarray(array)
    return feeds
