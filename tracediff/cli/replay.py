"""``tracediff replay CANDIDATE REF``: each aligned layer of a candidate model run on the
reference trace's inputs, its local error judged, every root cause named.

CANDIDATE is ``package.module:object`` (a torch module, or a function of no arguments that
returns one), an ``.onnx`` or a ``.tflite`` file. Exit status 0 when nothing diverges, 1 when something does, 2 on bad input.
"""
from __future__ import annotations

import importlib
import os
import sys

from ..errors import TraceDiffError
from .diff import add_options, publish


def add_arguments(parser):
    parser.add_argument("candidate", metavar="CANDIDATE",
                        help="package.module:object (a torch module, or a function returning one) "
                             "or a .onnx / .tflite file")
    parser.add_argument("ref", metavar="REF", help="reference trace (recorded with values)")
    parser.add_argument("--loss", metavar="package.module:fn",
                        help="loss_fn(output) -> scalar, to replay parameter gradients too")
    add_options(parser)


def run(args) -> int:
    from ..replays import replay

    if args.candidate.endswith((".onnx", ".tflite")):
        candidate = args.candidate
    else:
        candidate = load_object(args.candidate, "CANDIDATE")
        if callable(candidate) and not _is_model(candidate):
            candidate = candidate()
    loss_fn = load_object(args.loss, "--loss") if args.loss else None
    if not os.path.exists(args.ref):
        raise TraceDiffError(f"replay: reference trace {args.ref} does not exist: give the path "
                             "of a trace recorded with values")
    report = replay(candidate, args.ref, loss_fn=loss_fn, rtol=args.rtol, atol=args.atol,
                    align=args.align, rename=args.rename, tolerances=args.tolerances)
    status = publish(report, args)
    return 1 if report.root_causes else status


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


def _is_model(obj) -> bool:
    """A model an adapter records (torch, Keras, Flax, ONNX), not a factory to call."""
    from ..adapters.base import framework_of
    return framework_of(obj) not in (None, "numpy")
