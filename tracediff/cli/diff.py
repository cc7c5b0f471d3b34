"""``tracediff diff A B``: compare a candidate trace with a reference, name the first divergence.

Exit status 0 when nothing diverges, 1 when something does, 2 on bad input.
"""
from __future__ import annotations

import sys
import time

from ..errors import TraceDiffError

PROGRESS_AFTER_S = 1.0


def add_arguments(parser):
    parser.add_argument("a", metavar="A", help="candidate trace (the thing under test)")
    parser.add_argument("b", metavar="B", help="reference trace")
    parser.add_argument("--fp64", metavar="G",
                        help="a float64 run of the reference: each pair passes when A is within "
                             "k x B's RMSE from G (k = 2 for float32, 3 for 16-bit); see docs/diff.md")
    parser.add_argument("--dask", metavar="ADDRESS|local:N",
                        help="compare the pairs on a Dask cluster: a scheduler address, or local:N "
                             "to start N local workers (needs tracediff[dask])")
    add_options(parser)


def add_options(parser):
    """The options of a comparison (``tracediff record --diff-against`` takes them too)."""
    parser.add_argument("--rtol", type=float, help="relative tolerance for every pair (default: per dtype)")
    parser.add_argument("--atol", type=float, help="absolute tolerance for every pair (default: per dtype)")
    parser.add_argument("--align", choices=("auto", "name", "order"), default="auto",
                        help="how records are paired: auto (names, rules, structure), name, order")
    parser.add_argument("--rename", metavar="RULES", help="TOML file of renames and explicit pairs")
    parser.add_argument("--tolerances", metavar="TOML", help="TOML file of per-layer tolerances (globs)")
    parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the report as JSON ('-': stdout)")
    parser.add_argument("--html", dest="html_out", metavar="OUT", help="write a self-contained HTML report")
    parser.add_argument("--markdown", dest="markdown_out", metavar="OUT", help="write a Markdown report")
    parser.add_argument("--model-explorer", metavar="DIR",
                        help="write Model Explorer node-data overlays of both sides into DIR")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")


class _Progress:
    """A rich progress bar on stderr, shown only once a diff has taken a second, on a terminal."""

    def __init__(self):
        self.started = time.perf_counter()
        self.bar = None
        self.task = None

    def __call__(self, done, total):
        if self.bar is None:
            if time.perf_counter() - self.started < PROGRESS_AFTER_S or not sys.stderr.isatty():
                return
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("comparing", total=total)
        self.bar.update(self.task, completed=done)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


OPTIONS = ("rtol", "atol", "align", "rename", "tolerances", "json_out", "html_out",
           "markdown_out", "model_explorer", "quiet")


def run(args) -> int:
    return compare_and_report(args.a, args.b, args)


def compare_and_report(a, b, args) -> int:
    """Diff trace ``a`` (candidate) with ``b`` (reference) under the options in ``args``, write
    and print the report; the exit status: 0 nothing diverges, 1 something does."""
    from ..compare import diff

    for label, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if value is not None and not value >= 0:
            raise TraceDiffError(f"{label} must be a number >= 0, got {value}")
    progress = _Progress()
    try:
        report = diff(a, b, rtol=args.rtol, atol=args.atol, align=args.align,
                      rename=args.rename, tolerances=args.tolerances, progress=progress,
                      fp64=getattr(args, "fp64", None), dask=getattr(args, "dask", None))
    finally:
        progress.close()
    return publish(report, args)


def publish(report, args) -> int:
    """Write the report where ``args`` asks (--json/--html/--markdown), print it (or only its
    summary line with --quiet); the exit status: 0 nothing diverges, 1 something does."""
    from ..report.terminal import summary_line

    if args.json_out == "-":
        print(report.to_json())
    elif args.json_out:
        report.to_json(args.json_out)
    if args.html_out:
        report.to_html(args.html_out)
    if args.markdown_out:
        report.to_markdown(args.markdown_out)
    if getattr(args, "model_explorer", None):
        report.to_model_explorer(args.model_explorer)
    if args.json_out != "-":
        if args.quiet:
            print(summary_line(report))
        else:
            report.render()
    if report.missing:   # an incomplete diff is no verdict: the report lists what is missing
        print(f"tracediff diff: error: {len(report.missing)} pair(s) were not compared "
              f"({report.missing[0]['reason']}), see \"missing\" in the JSON report; run again",
              file=sys.stderr)
        return 2
    return 0 if report.ok else 1
