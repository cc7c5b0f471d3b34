"""The candidate a replay, an extract or a one-layer repro runs, named as people name code on a
command line: ``package.module:object``."""
from __future__ import annotations

import importlib
import os
import sys

from ..errors import TraceDiffError


def load_object(spec, label):
    """The object ``package.module:attribute`` names (the current folder importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise TraceDiffError(f"{label} {spec!r} is not package.module:object: name the module "
                             "and the object in it, e.g. mymodels.resnet:model")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TraceDiffError(f"{label}: cannot import {module_name!r} ({exc}); run from the folder "
                             "that holds it or install it") from None
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise TraceDiffError(f"{label}: {module_name} has no {attribute!r}: name an object "
                                 f"defined in {module.__file__}")
        value = getattr(value, part)
    return value


def load_candidate(spec, label):
    """The model ``spec`` names; a function of no arguments that builds one (a factory) is
    called. A model an adapter records (torch, Keras, Flax, ONNX) is returned as it is."""
    from ..adapters.base import framework_of

    candidate = load_object(spec, label)
    if callable(candidate) and framework_of(candidate) in (None, "numpy"):
        required = _required_arguments(candidate)
        if required:
            raise TraceDiffError(
                f"{label} {spec!r} is a function of ({', '.join(required)}), not a model: name "
                "the model, a function of no arguments that returns it, or for a NumPy port "
                "its layers dict {record name: fn(*inputs)}")
        candidate = candidate()
    return candidate


def _required_arguments(function) -> list:
    """The parameters ``function`` cannot be called without ([] where Python cannot tell)."""
    import inspect
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
