"""Structured outputs (tuples, lists, dicts, dataclasses such as Hugging Face ``ModelOutput``) as
named leaves with the stable ``:`` suffixes of docs/conventions.md: ``lstm:0``, ``lstm:1:0``,
``bert:last_hidden_state``. Every adapter names its structured outputs through this."""
from __future__ import annotations

import copy
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


def with_leaves(value, replace, is_leaf):
    """``value`` with each leaf ``named_leaves`` finds replaced by ``replace(leaf)``: the same
    structure (its own type: a namedtuple, a ``ModelOutput``), rebuilt only where a leaf
    changed, so an unchanged output is handed back as it is. A dataclass that is not a mapping
    is left as it is."""
    if is_leaf(value):
        return replace(value)
    if isinstance(value, Mapping):
        items = {key: with_leaves(item, replace, is_leaf) for key, item in value.items()}
        if all(items[key] is item for key, item in value.items()):
            return value
        out = copy.copy(value)
        for key, item in items.items():
            out[key] = item
        return out
    if isinstance(value, (tuple, list)):
        items = [with_leaves(item, replace, is_leaf) for item in value]
        if all(new is old for new, old in zip(items, value)):
            return value
        if isinstance(value, list):
            return items if type(value) is list else type(value)(items)
        if hasattr(value, "_fields"):       # a namedtuple
            return type(value)(*items)
        return tuple(items) if type(value) is tuple else type(value)(items)
    return value
