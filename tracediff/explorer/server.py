"""A local Model Explorer (its own Flask server, bound to 127.0.0.1 on a free port) with each
side's graph and overlays loaded. Needs ``tracediff[viewer]``."""
from __future__ import annotations

import os
import socket

from ..errors import TraceDiffError
from ..trace import open_trace
from .graph import trace_graph

INSTALL = ("tracediff view needs Model Explorer: pip install 'tracediff[viewer]' "
           "(ai-edge-model-explorer, and model-explorer-onnx for .onnx models)")
# the overlay loaded first is the one Model Explorer shows; the others are in its node data menu
ORDER = ("status", "forward", "backward", "local")


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
            with open_trace(info["trace"]) as trace:
                graphs = trace_graph(trace, target)
            config.graphs_list.append(graphs)
            config.model_sources.append({"url": f"graphs://{target}/{len(config.graphs_list) - 1}"})
        for kind in ORDER:
            name = info.get("overlays", {}).get(kind)
            if name:
                config.add_node_data_from_path(os.path.join(os.fspath(directory), name), target)
    return config, sorted(set(extensions))


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

    server.start(host=host, port=port or free_port(host), config=config, extensions=extensions,
                 no_open_in_browser=not open_browser)
