"""What ``record`` and ``recording`` share: unwrapping compiled models, validating options, and
opening the Recorder with the torch root attributes."""
from __future__ import annotations

import os

import torch
from torch import nn

from tracediff.errors import TraceDiffError
from tracediff.recorder import Recorder

from .convert import HostWriter
from .distributed import Placements, RankWriter, announce, prepare, rank_target, world
from .meta import matmul_precision_meta

LEVELS = ("module", "op")
# Records between index flushes (the Recorder flushes every record by default, ~0.6 ms each).
FLUSH_EVERY = 64


def original_module(model):
    """``(module, compiled)``: a ``torch.compile``d module is recorded through its original
    module, run eagerly (compiled kernels may round differently; the trace says ``compiled``)."""
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module):
        return original, True
    if isinstance(model, nn.Module):
        return model, False
    if callable(model) and hasattr(model, "__wrapped__"):
        raise TraceDiffError(
            "cannot record a torch.compile'd function: tracediff hooks nn.Module layers; "
            "pass the nn.Module (compiled or not) instead")
    raise TraceDiffError(
        f"cannot record {type(model).__name__}: the torch adapter records torch.nn.Module models; "
        "wrap the computation in an nn.Module")


def check_level(level):
    if level not in LEVELS:
        raise TraceDiffError(f"level={level!r} is not a capture level: use 'module' or 'op'")
    return level


def open_recorder(module, path, *, values, level, compiled, overwrite=False, dims=None, seed=None,
                  model_name=None, flush_every=FLUSH_EVERY, extra=None, background=None,
                  shards=None, data_parallel=False):
    """The Recorder and its writer. Under torch.distributed (or with ``path`` a folder or a
    ``{rank}`` template) this rank's file of a multi-rank trace, and a writer that records
    each tensor's placement (``distributed.py``)."""
    meta = {"level": level, "compiled": compiled, **matmul_precision_meta(), **(extra or {})}
    placements = Placements(shards, data_parallel=data_parallel, world_size=world()[1])
    target = rank_target(path)
    ranks = {}
    if target is not None:
        prepare(target)
        path, ranks = target.file, {"rank": target.rank, "world_size": target.world_size}
    recorder = Recorder(
        path, framework="torch", dims=dims, model=model_name or type(module).__name__, seed=seed,
        framework_version=torch.__version__, overwrite=overwrite, values=values, meta=meta,
        flush_every=flush_every, **ranks)
    if target is not None:
        try:
            announce(target)
        except BaseException:
            recorder.close(complete=False)
            raise
    if background is None:
        background = values and spare_cpu()
    writer = HostWriter(recorder, background=background)
    if target is not None or shards or torch.distributed.is_initialized():
        writer = RankWriter(writer, placements)
    return recorder, writer


def spare_cpu() -> bool:
    """``background=None`` with full tensors: a writer thread pays off (hashing and HDF5 writes
    overlap the model) when torch's threads leave a CPU free for it; otherwise it only adds a
    copy. Stats-only records stay in the hook: the thread would save less than the time the
    model thread then waits for the GIL."""
    return torch.get_num_threads() < (os.cpu_count() or 1)
