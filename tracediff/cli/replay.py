"""``tracediff replay CANDIDATE REF``: each aligned layer of a candidate model run on the
reference trace's inputs, its local error judged, every root cause named.

CANDIDATE is ``package.module:object`` (a torch module, or a function of no arguments that
returns one), an ``.onnx`` or a ``.tflite`` file. Exit status 0 when nothing diverges, 1 when
something does, 2 on bad input.
"""
from __future__ import annotations

import os

from ..errors import TraceDiffError
from ..replays.candidate import load_candidate, load_object
from .diff import add_options, publish


def add_arguments(parser):
    parser.add_argument("candidate", metavar="CANDIDATE",
                        help="package.module:object (a torch module, or a function returning one) "
                             "or a .onnx / .tflite file")
    parser.add_argument("ref", metavar="REF", help="reference trace (recorded with values)")
    parser.add_argument("--loss", metavar="package.module:fn",
                        help="loss_fn(output) -> scalar, to replay the backward too; for a "
                             ".onnx file the ONNX adapter's loss: cross_entropy, mse or sum")
    parser.add_argument("--target", metavar="FILE.npy", help="target of an ONNX file's --loss")
    add_options(parser)


def run(args) -> int:
    from ..replays import replay

    if args.candidate.endswith((".onnx", ".tflite")):
        candidate = args.candidate
    else:
        candidate = load_candidate(args.candidate, "CANDIDATE")
    onnx_file = args.candidate.endswith(".onnx")
    if args.loss and onnx_file:
        loss_fn = args.loss     # named: replay refuses a name the ONNX adapter does not know
    else:
        loss_fn = load_object(args.loss, "--loss") if args.loss else None
    target = None
    if args.target:
        if not onnx_file:
            raise TraceDiffError("--target: only an .onnx CANDIDATE takes a target (a loss "
                                 "function given with --loss holds its own)")
        from .record import _load_npy
        target = _load_npy(args.target, "--target")
    if not os.path.exists(args.ref):
        raise TraceDiffError(f"replay: reference trace {args.ref} does not exist: give the path "
                             "of a trace recorded with values")
    report = replay(candidate, args.ref, loss_fn=loss_fn, target=target, rtol=args.rtol,
                    atol=args.atol, align=args.align, rename=args.rename,
                    tolerances=args.tolerances)
    status = publish(report, args)
    return 1 if report.root_causes else status
