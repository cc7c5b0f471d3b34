"""The arguments a Keras layer call is given in a replay (``tracediff extract``'s one-layer
repro): the substituted pass of ``replay.py``, with the arguments of one call kept."""
from __future__ import annotations

from .replay import _Substitution


class _Arguments(_Substitution):
    """The replay's substitution, keeping what the call ``key`` = (layer path, call) got."""

    def __init__(self, model, reference, key):
        super().__init__(model, reference, set())
        self.key, self.found = key, None

    def _wrap(self, path, layer, original):
        def given(*args, **kwargs):     # called by the replay's wrapper with substituted values
            if (path, self.calls[path]) == self.key and self.found is None:
                self.found = (args, kwargs)
            return original(*args, **kwargs)

        return super()._wrap(path, layer, given)


def layer_arguments(model, inputs, reference, path, call=0):
    """``(args, kwargs)`` the layer at ``path`` got in its call ``call`` of one substituted
    pass on ``inputs`` (``reference`` as in ``replay.replay``); None where it was not called."""
    with _Arguments(model, reference, (path, call)) as arguments:
        model(inputs, training=False)
    return arguments.found
