"""``tracediff check TRACE [--json OUT] [--classes N]``: the health checks on one trace.

Exit status: 0 every check passed or warned, 1 a check failed, 2 an error.
"""
from __future__ import annotations

import sys

from ..errors import TraceDiffError


def add_arguments(parser):
    parser.add_argument("trace", metavar="TRACE")
    parser.add_argument("--json", dest="json_out", metavar="OUT",
                        help="write the report as JSON to OUT ('-' for stdout, without the table)")
    parser.add_argument("--classes", type=_classes, metavar="N",
                        help="number of classes for the initial-loss check (default: the width of "
                             "the last output, when the loss is known to classify)")
    parser.add_argument("--only", action="append", metavar="ID",
                        help="run only this check (repeatable)")


def run(args) -> int:
    from ..checks import check
    from ..report.check_terminal import print_report

    report = check(args.trace, classes=args.classes, only=args.only)
    if args.json_out == "-":
        print(report.to_json())
    else:
        if args.json_out:
            try:
                report.to_json(args.json_out)
            except OSError as exc:
                raise TraceDiffError(f"cannot write the JSON report to {args.json_out}: "
                                     f"{exc.strerror}; choose a writable path") from None
        print_report(report, file=sys.stdout)
    return 0 if report.ok else 1


def _classes(text):
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes takes an integer >= 2, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"--classes takes an integer >= 2, got {value}")
    return value
