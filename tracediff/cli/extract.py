"""``tracediff extract A B --layer NAME --candidate SPEC --out DIR``: a one-layer repro of
layer NAME of the candidate (SPEC, whose trace is A: ``package.module:object`` naming a torch
module, a Keras model or a NumPy port's layers, or a ``.onnx`` file) on the reference B's
inputs: an HDF5 case and a pytest file that fails while the layer is wrong (and, for ONNX, the
one-layer model)."""
from __future__ import annotations

import sys

from ..replays.candidate import load_candidate


def add_arguments(parser):
    parser.add_argument("a", metavar="A", help="the candidate's trace")
    parser.add_argument("b", metavar="B", help="the reference trace (recorded with values)")
    parser.add_argument("--layer", required=True, help="the candidate's record name of the layer")
    parser.add_argument("--call", type=int, default=0, help="which call of the layer (default 0)")
    parser.add_argument("--candidate", required=True, metavar="SPEC",
                        help="what A was recorded from: package.module:object (a torch module, a "
                             "Keras model, a NumPy port's layers dict) or a .onnx file")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the repro")
    parser.add_argument("--rtol", type=float, help="relative tolerance (default: per dtype)")
    parser.add_argument("--atol", type=float, help="absolute tolerance (default: per dtype)")


def run(args) -> int:
    from ..replays.extract import extract

    if args.candidate.endswith(".onnx"):
        model = args.candidate
    else:
        model = load_candidate(args.candidate, "--candidate")
    case, test = extract(args.a, args.b, args.layer, model, args.out, spec=args.candidate,
                         call=args.call, rtol=args.rtol, atol=args.atol)
    print(f"wrote {case} and {test}: run `pytest {test}`", file=sys.stdout)
    return 0
