"""Structured outputs (tuples, lists, dicts, dataclasses such as Hugging Face ``ModelOutput``) as
named leaves with the stable ``:`` suffixes of docs/conventions.md: ``lstm:0``, ``lstm:1:0``,
``bert:last_hidden_state``. Every adapter names its structured outputs through this."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping


def named_leaves(value, name: str, is_leaf):
    """Yield ``(name + suffix, leaf)`` for every leaf inside ``value``, depth first.

    ``is_leaf`` says what a tensor is; other leaves (None, ints, strings, caches) are skipped,
    and a plain tensor keeps ``name`` without a suffix.
    """
    if is_leaf(value):
        yield name, value
    elif isinstance(value, Mapping):  # dict, OrderedDict, ModelOutput (its set fields only)
        for key, item in value.items():
            yield from named_leaves(item, f"{name}:{key}", is_leaf)
    elif isinstance(value, (tuple, list)):
        for position, item in enumerate(value):
            yield from named_leaves(item, f"{name}:{position}", is_leaf)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from named_leaves(getattr(value, field.name), f"{name}:{field.name}", is_leaf)
