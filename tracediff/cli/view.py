"""``tracediff view A B [--model M]``: diff two traces and open the result in Model Explorer,
started locally (its own server on 127.0.0.1, a free port) with each side's graph and the
diff's overlays loaded; prints the URL and serves until interrupted.

A model (.onnx, .tflite, torch.export .pt2) is drawn for the side recorded with its framework;
a side without one is drawn from its trace's dataflow. Exit status 2 on bad input, or when
Model Explorer is not installed (``pip install 'tracediff[viewer]'``).
"""
from __future__ import annotations

import os
import tempfile

from ..errors import TraceDiffError


def add_arguments(parser):
    parser.add_argument("a", metavar="A", help="candidate trace (the left pane)")
    parser.add_argument("b", metavar="B", help="reference trace")
    parser.add_argument("--model", action="append", default=[], metavar="M",
                        help="the .onnx, .tflite or torch.export .pt2 model drawn for the trace of "
                             "its framework (twice: one a side); default: the traces' own graphs")
    parser.add_argument("--out", metavar="DIR",
                        help="where the overlays are written (default: a temporary directory)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: a free one)")
    parser.add_argument("--no-browser", action="store_true", help="print the URL only")
    parser.add_argument("--rtol", type=float, help="relative tolerance for every pair")
    parser.add_argument("--atol", type=float, help="absolute tolerance for every pair")
    parser.add_argument("--rename", metavar="RULES", help="TOML file of renames and explicit pairs")
    parser.add_argument("--tolerances", metavar="TOML", help="TOML file of per-layer tolerances")


def run(args) -> int:
    from ..compare import diff
    from ..explorer import framework_of_model
    from ..explorer.server import explorer_config, require_model_explorer, serve
    from ..report.terminal import summary_line

    require_model_explorer()
    for path in (args.a, args.b):
        if not os.path.exists(path):
            raise TraceDiffError(f"view: trace {path} does not exist")
    report = diff(args.a, args.b, rtol=args.rtol, atol=args.atol, rename=args.rename,
                  tolerances=args.tolerances)
    models = assign_models(args.model, (report.a.get("framework"), report.b.get("framework")),
                           framework_of_model)
    directory = args.out or tempfile.mkdtemp(prefix="tracediff-view-")
    index = report.to_model_explorer(directory, *models)
    config, extensions = explorer_config(index, directory, models)
    print(summary_line(report))
    print(f"tracediff view: overlays in {directory}", flush=True)
    serve(config, extensions, host=args.host, port=args.port, open_browser=not args.no_browser)
    return 0


def assign_models(models, frameworks, framework_of_model):
    """``(model for A, model for B)``: each model goes to the first side recorded with its
    framework that has none yet."""
    if len(models) > 2:
        raise TraceDiffError("view: give --model at most twice (one a side)")
    out = [None, None]
    for model in models:
        framework = framework_of_model(model)
        side = next((i for i in (0, 1) if frameworks[i] == framework and out[i] is None), None)
        if side is None:
            raise TraceDiffError(
                f"view: {model} is a {framework} model but no trace left to draw it for was "
                f"recorded with {framework} (A: {frameworks[0]}, B: {frameworks[1]})")
        out[side] = model
    return tuple(out)
