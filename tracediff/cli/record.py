"""``tracediff record MODEL.onnx|MODEL.tflite``: every node output of an ONNX model through
onnxruntime, or every tensor of a LiteRT (TFLite) model's interpreter run; the adapter is
chosen by the model file's suffix (``adapters.base.framework_of``).

The adapter (and with it onnxruntime or LiteRT) is imported only when the verb runs.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..adapters.base import ONNX_LOSSES, framework_of
from ..errors import TraceDiffError
from . import diff as diff_cli


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL.onnx|MODEL.tflite")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="value of a graph input (repeat for each input)")
    parser.add_argument("--random", action="store_true",
                        help="generate seeded inputs (dynamic axes from --dims, else primes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    parser.add_argument("--dims", metavar="NAME=SIZE,...",
                        help="sizes of dynamic axes, e.g. batch=3,seq=7")
    parser.add_argument("--out", required=True, metavar="TRACE", help="trace file to write")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="most node outputs (and, with --loss, gradients) held at once, "
                             "e.g. 512MB (default 256MiB)")
    parser.add_argument("--provider", action="append", metavar="NAME",
                        help="onnxruntime execution provider (cuda, cpu, ...); default cpu")
    parser.add_argument("--loss", choices=ONNX_LOSSES,
                        help="also record gradients of this loss")
    parser.add_argument("--target", metavar="FILE.npy", help="target of --loss")
    parser.add_argument("--save-grad-model", metavar="PATH",
                        help="keep the gradient model built for --loss")
    parser.add_argument("--stats-only", action="store_true",
                        help="store statistics and a sample instead of whole tensors")
    parser.add_argument("--overwrite", action="store_true", help="replace TRACE if it exists")
    comparison = parser.add_argument_group(
        "comparison", "--diff-against REF: once TRACE is written, diff it against REF in the "
        "same process, as `tracediff diff TRACE REF` does (same report, exit status 1 when "
        "something diverges); the options below are diff's")
    comparison.add_argument("--diff-against", metavar="REF", help="reference trace to diff against")
    diff_cli.add_options(comparison)


def run(args) -> int:
    if args.input and args.random:
        raise TraceDiffError("give either --input NAME=FILE.npy or --random, not both")
    if not args.input and not args.random:
        raise TraceDiffError("no inputs: give --input NAME=FILE.npy for each graph input, "
                             "or --random to generate them")
    if os.path.exists(args.out) and not args.overwrite:
        raise TraceDiffError(f"{args.out} already exists: choose another --out or pass --overwrite")
    _check_comparison(args)
    if framework_of(args.model) == "litert":
        return _record_litert(args)
    inputs = None if args.random else _read_inputs(args.input)
    dims = parse_dims(args.dims) if args.dims else None
    target = _load_npy(args.target, "--target") if args.target else None
    from ..adapters import onnx as tdo  # heavy: onnx + onnxruntime

    tdo.record(args.model, inputs, args.out, loss=args.loss, target=target,
               max_memory=args.max_memory, providers=args.provider, overwrite=args.overwrite,
               dims=dims, seed=args.seed if args.random else None,
               values=not args.stats_only, save_grad_model=args.save_grad_model)
    from ..trace import open_trace

    with open_trace(args.out) as trace:
        forward = len(trace.records("forward"))
        groups = _meta(trace).get("groups", "?")
        print(f"recorded {len(trace)} records ({forward} node outputs, {groups} group"
              f"{'' if groups == 1 else 's'}) to {args.out}", file=sys.stderr)
    if args.diff_against:
        return diff_cli.compare_and_report(args.out, args.diff_against, args)
    return 0


# options of the ONNX adapter that a LiteRT model has no use for
_ONNX_ONLY = (("random", "--random"), ("dims", "--dims"), ("max_memory", "--max-memory"),
              ("provider", "--provider"), ("loss", "--loss"), ("target", "--target"),
              ("save_grad_model", "--save-grad-model"))


def _record_litert(args) -> int:
    for attr, flag in _ONNX_ONLY:
        if getattr(args, attr):
            raise TraceDiffError(f"{flag} is an option of ONNX models: a .tflite model is "
                                 "recorded on --input NAME=FILE.npy values, forward only")
    inputs = _read_inputs(args.input)
    from ..adapters import litert as tdl  # heavy: the LiteRT runtime

    tdl.record(args.model, inputs, args.out, overwrite=args.overwrite,
               values=not args.stats_only)
    from ..trace import open_trace

    with open_trace(args.out) as trace:
        forward = len(trace.records("forward"))
        print(f"recorded {len(trace)} records ({forward} op outputs) to {args.out}",
              file=sys.stderr)
    if args.diff_against:
        return diff_cli.compare_and_report(args.out, args.diff_against, args)
    return 0


def _check_comparison(args):
    """Refuse diff options without a reference, a missing reference, and a reference that
    --out would overwrite, before the model runs."""
    if not args.diff_against:
        given = [name for name in diff_cli.OPTIONS
                 if getattr(args, name) is not None and getattr(args, name) is not False
                 and getattr(args, name) != "auto"]
        if given:
            flag = "--" + given[0].removesuffix("_out").replace("_", "-")
            raise TraceDiffError(f"{flag} is an option of the comparison: give --diff-against "
                                 "REF.h5 too, or leave it out")
        return
    ref = args.diff_against
    if not os.path.isfile(ref):
        raise TraceDiffError(f"--diff-against {ref} does not exist: record the reference trace "
                             "first (tracediff record ... --out REF.h5)")
    if os.path.exists(args.out) and os.path.samefile(ref, args.out) \
            or os.path.abspath(ref) == os.path.abspath(args.out):
        raise TraceDiffError(f"--diff-against and --out both name {ref}: write the new trace "
                             "to another --out")


def parse_dims(text):
    """``batch=3,seq=7`` -> ``{"batch": 3, "seq": 7}``."""
    dims = {}
    for item in text.split(","):
        name, sep, size = item.partition("=")
        if not sep or not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise TraceDiffError(f"cannot read --dims item {item!r}: write NAME=SIZE pairs "
                                 "joined by commas, e.g. batch=3,seq=7")
        dims[name.strip()] = int(size)
    return dims


def _read_inputs(items):
    inputs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TraceDiffError(f"cannot read --input {item!r}: write NAME=FILE.npy")
        if name in inputs:
            raise TraceDiffError(f"--input {name} is given twice: give each input once")
        inputs[name] = _load_npy(path, f"--input {name}")
    return inputs


def _load_npy(path, option):
    if not os.path.isfile(path):
        raise TraceDiffError(f"{option}: {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise TraceDiffError(f"{option}: {path} holds Python objects, which are not loaded "
                                 "(no pickle): save a numeric array with np.save") from None
        raise TraceDiffError(f"{option}: {path} is not a .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise TraceDiffError(f"{option}: cannot read {path} as .npy ({exc})") from None


def _meta(trace):
    import json

    raw = trace.attrs.get("meta", "{}")
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return {}
