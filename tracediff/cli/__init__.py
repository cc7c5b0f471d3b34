"""The ``tracediff`` command line: one verb a module, each with ``add_parser`` and ``run``."""
from __future__ import annotations

import argparse
import gc
import importlib
import sys
import warnings

from .._version import __version__
from ..errors import IncompleteTraceWarning, TraceDiffError, first_line

VERBS = {
    "show": "list the records of a trace",
    "diff": "compare two traces and name the first diverging layer",
    "replay": "run each layer of a candidate model on a reference trace's inputs: every root cause",
    "extract": "write a one-layer repro (HDF5 case + pytest file) of a candidate's layer",
    "check": "run the health checks on a trace",
    "record": "record every tensor of an ONNX (onnxruntime) or LiteRT (.tflite) model",
    "demo": "record planted-bug ports and their references, and diff them",
    "view": "open a diff in Model Explorer: both graphs with the errors coloured on their nodes",
}

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, as every other error: what, where (the verb), what to do
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tracediff", description="Record, diff and check per-layer tensor traces.")
    parser.add_argument("--version", action="version", version=f"tracediff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for verb, summary in VERBS.items():
        module = importlib.import_module(f".{verb}", __name__)
        verb_parser = sub.add_parser(verb, help=summary, description=summary)
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show tracebacks instead of one-line errors")
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, bad arguments: a status, not an exception
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_ERROR
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if debug else "default")
        warnings.showwarning = _one_line_warning
        try:
            return int(args.run(args) or 0)
        except TraceDiffError as exc:
            if debug:
                raise
            print(f"tracediff {args.verb}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print(f"tracediff {args.verb}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # an unexpected failure is still one line without --debug
            if debug:
                raise
            print(f"tracediff {args.verb}: error: {type(exc).__name__}: {first_line(exc, '')} "
                  "(run again with --debug for the traceback)", file=sys.stderr)
            return EXIT_ERROR


def console_main() -> int:
    """The ``tracediff`` command and ``python -m tracediff``: ``main()``, then leave the
    interpreter's exit nothing to search for garbage. The objects left at the end are mostly
    the imported modules' (numpy, onnx, h5py...); the collections the exit runs over them
    took 0.05-0.1 s of a 1 s ``tracediff record``. Frozen, they are freed without that search
    (files are closed by then: every command closes what it writes). In-process callers of
    ``main()`` are unaffected."""
    status = main()
    gc.freeze()
    return status


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    label = "warning" if category is not IncompleteTraceWarning else "warning: incomplete trace"
    print(f"tracediff: {label}: {message}", file=sys.stderr)
