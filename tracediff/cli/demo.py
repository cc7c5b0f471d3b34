"""``tracediff demo [--out DIR]``: NumPy ports with planted bugs against their PyTorch
references (NumPy references without torch), diffed, reported on the terminal and as HTML."""
from __future__ import annotations

DEFAULT_OUT = "demo-out"  # what `make demo` writes, and git ignores


def add_arguments(parser):
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for the traces and reports (default: ./{DEFAULT_OUT})")
    parser.add_argument("--numpy-reference", action="store_true",
                        help="use the correct NumPy ports as references even when torch is installed")
    parser.add_argument("--full", action="store_true",
                        help="print the whole diff report of each case, not a summary")
    parser.add_argument("--ports", default="numpy", metavar="LIST",
                        help="comma-separated: numpy (default), jax (a Flax port), litert (a "
                             "TFLite conversion), or all; jax and litert import their runtimes")


def run(args) -> int:
    from ..demo.run import PORTS, cases_for, run_demo
    ports = PORTS if args.ports.strip() == "all" else [p.strip() for p in args.ports.split(",")
                                                      if p.strip()]
    return run_demo(args.out, use_torch=False if args.numpy_reference else None, full=args.full,
                    cases=cases_for(ports))
