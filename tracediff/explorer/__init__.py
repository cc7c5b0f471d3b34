"""Model Explorer for a diff: node-data overlays keyed by each side's graph
(``write_overlays``, ``Report.to_model_explorer``) and a local Model Explorer with the models
and overlays loaded (``tracediff view``). docs/graph.md."""
from .keys import MODEL_FRAMEWORKS, framework_of_model, side_nodes
from .overlays import write_overlays

__all__ = ["MODEL_FRAMEWORKS", "framework_of_model", "side_nodes", "write_overlays"]
