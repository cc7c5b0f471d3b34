"""Layer replay: each aligned candidate layer run on the reference's inputs, so that its own
(local) error is measured apart from the error it inherits, and every root cause is named.
See docs/replay.md."""
from .run import replay

__all__ = ["replay"]
