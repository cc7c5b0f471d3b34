"""Flatten structured values (tuples, lists, dicts, Hugging Face ModelOutput, dataclasses) into
named tensors with stable ``:`` suffixes: ``lstm:0``, ``lstm:1:0``, ``gpt2:last_hidden_state``."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from tracediff.structure import named_leaves


def is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def named_tensors(value, name: str):
    """``(name + suffix, tensor)`` for every tensor inside ``value`` (see tracediff.structure)."""
    return named_leaves(value, name, is_tensor)


def split_inputs(inputs):
    """A user's ``inputs`` as ``(args, kwargs)``: a tensor, a tuple/list of positional arguments,
    or a dict of keyword arguments."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def named_inputs(args, kwargs, base: str = "input"):
    """``input`` for a single positional tensor, ``input:0``, ``input:1``... for several,
    ``input:<key>`` for keyword arguments."""
    positional = list(named_tensors(list(args), base))
    if len(positional) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
        positional = [(base, args[0])]
    return positional + list(named_tensors(dict(kwargs), base))
