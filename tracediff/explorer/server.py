"""A local Model Explorer (its own Flask server, bound to 127.0.0.1 on a free port) with each
side's graph and overlays loaded. Needs ``tracediff[viewer]``."""
from __future__ import annotations

import json
import os
import socket
import sys

from ..errors import TraceDiffError
from ..ranks import open_any
from .graph import trace_graph

INSTALL = ("tracediff view needs Model Explorer: pip install 'tracediff[viewer]' "
           "(ai-edge-model-explorer, and model-explorer-onnx for .onnx models)")
# Model Explorer shows the overlay loaded last (status); the others are a click away in its list
ORDER = ("local", "backward", "forward", "status")


def require_model_explorer():
    try:
        import model_explorer  # noqa: F401
    except ImportError:
        raise TraceDiffError(INSTALL) from None


def explorer_config(index: dict, directory, models):
    """Model Explorer's config: A's then B's graph (its model file, or its trace drawn), each
    with its overlays; returns ``(config, extensions)``."""
    from model_explorer.config import ModelExplorerConfig

    config = ModelExplorerConfig()
    extensions = []
    for side, model in zip(("a", "b"), models):
        info = index["sides"][side]
        if model is not None:
            config.add_model_from_path(os.fspath(model))
            target = os.path.basename(os.fspath(model))
            if str(model).endswith(".onnx"):
                _need_onnx_adapter()
                extensions.append("model_explorer_onnx")
        else:
            target = f"{side.upper()} {os.path.basename(info['trace'] or '')}"
            with open_any(info["trace"]) as trace:   # a trace file or a multi-rank folder
                graphs = trace_graph(trace, target)
            config.graphs_list.append(graphs)
            config.model_sources.append({"url": f"graphs://{target}/{len(config.graphs_list) - 1}"})
        for kind in ORDER:
            name = info.get("overlays", {}).get(kind)
            if name and _has_results(os.path.join(os.fspath(directory), name)):
                config.add_node_data_from_path(os.path.join(os.fspath(directory), name), target)
    return config, sorted(set(extensions))


def _has_results(path):
    with open(path, encoding="utf-8") as handle:
        return bool(json.load(handle).get("results"))


def _need_onnx_adapter():
    try:
        import model_explorer_onnx  # noqa: F401
    except ImportError:
        raise TraceDiffError("tracediff view: drawing a .onnx model needs model-explorer-onnx: "
                             "pip install 'tracediff[viewer]'") from None


def free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve(config, extensions, host="127.0.0.1", port=None, open_browser=True):
    """Start Model Explorer's server (blocks until interrupted); it prints the URL."""
    from model_explorer import server

    sys.stdout.reconfigure(line_buffering=True)   # the URL it prints reaches a pipe at once
    server.start(host=host, port=port or free_port(host), config=config, extensions=extensions,
                 no_open_in_browser=not open_browser)
