"""``record_generation``: a model's ``generate`` (a Hugging Face causal LM and its KV cache)
recorded per decode step. Decode step 0 is the prompt's forward, each later one the forward of
the new token(s); every record keeps the sequence positions its step computed (meta
``positions``), so the diff compares decode step t with those positions of a run on the whole
sequence (docs/diff.md, "Steps, decode steps and batches")."""
from __future__ import annotations

import torch

from tracediff.errors import TraceDiffError

from .recording import Recording
from .session import FLUSH_EVERY
from .structure import split_inputs


def record_generation(model, inputs, path, *, level="module", include=None, exclude=None,
                      kinds=None, values=True, overwrite=False, dims=None, seed=None,
                      model_name=None, params=True, flush_every=FLUSH_EVERY, background=None,
                      **generate_kwargs):
    """Run ``model.generate(inputs, **generate_kwargs)`` without gradients, each forward of
    ``model`` recorded as one decode step, into ``path``; returns what ``generate`` returns.

    ``inputs``: the prompt's token ids (a tensor) or a dict of keyword arguments
    (``{"input_ids": ..., "attention_mask": ...}``). Parameters are recorded once, at decode
    step 0.
    """
    if not callable(getattr(model, "generate", None)):
        raise TraceDiffError(
            f"record_generation needs a model with a generate method (a Hugging Face causal LM), "
            f"got {type(model).__name__}: for a decoding loop of your own, wrap it in "
            "tdt.recording(model, path, decode=True)")
    args, kwargs = split_inputs(inputs)
    with Recording(model, path, every=1, values=values, loss=False, level=level, include=include,
                   exclude=exclude, kinds=kinds, overwrite=overwrite, dims=dims, seed=seed,
                   model_name=model_name, params=params, flush_every=flush_every,
                   background=background, decode=True):
        with torch.no_grad():
            return model.generate(*args, **kwargs, **generate_kwargs)
