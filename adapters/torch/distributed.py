"""Recording under ``torch.distributed``: each rank writes its own file into a multi-rank trace
folder (``run.trace/rank-00003.h5``; rank 0 writes the manifest), and every record says how its
tensor is placed over the ranks (meta ``placement``, ``mesh``, ``mesh_coord``; docs/torch.md
"Distributed"):

- a DTensor (tensor parallelism, FSDP2 parameters and gradients) is recorded as its local shard
  with its own placements and device-mesh coordinates;
- under DistributedDataParallel or FSDP2 (data parallel), inputs, activations and their
  gradients are ``Shard(0)`` (each rank has its part of the batch) and the loss
  ``Partial(avg)`` (each rank's is the mean over its part);
- ``shards={"glob": "Shard(-1)", ...}`` declares the placement of plain tensors (manual,
  Megatron-style tensor parallelism) by record name;
- anything else is ``Replicate()``: every rank holds the whole tensor, and the diff checks the
  copies agree.
"""
from __future__ import annotations

import fnmatch
import os
from typing import NamedTuple

import torch

from tracediff.errors import TraceDiffError
from tracediff.ranks import manifest as manifests
from tracediff.ranks.placement import REPLICATE, Placement, parse, text

DATA_PARALLEL_KINDS = ("input", "forward", "backward")


class RankTarget(NamedTuple):
    """Where this rank writes: its own file, in the folder that holds the manifest."""
    file: str
    folder: str
    files: list        # every rank's file, relative to the folder
    rank: int
    world_size: int


def world() -> tuple:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside ``torch.distributed``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_target(path) -> RankTarget | None:
    """This rank's file when ``path`` is a folder (an existing one, or a name ending in ``/``
    or ``.trace``) or a template with ``{rank}``; None for a plain file path in a one-process
    run, and for a trace kept in memory (``tracediff.memory.InMemory``, each rank its own). A
    plain file under several ranks is refused: they would all write it."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    rank, size = world()
    if "{rank" in path:
        try:
            names = [path.format(rank=r) for r in range(size)]
        except (KeyError, IndexError, ValueError) as exc:
            raise TraceDiffError(
                f"trace path template {path!r} is not valid ({exc}): write it like "
                "'run.trace/rank-{rank:05d}.h5'") from None
        folder = os.path.dirname(os.path.abspath(names[0]))
        if any(os.path.dirname(os.path.abspath(n)) != folder for n in names) or len(set(names)) != size:
            raise TraceDiffError(
                f"trace path template {path!r}: {{rank}} must be in the file name, one file per "
                "rank in one folder, e.g. 'run.trace/rank-{rank:05d}.h5'")
        files = [os.path.basename(n) for n in names]
        return RankTarget(names[rank], folder, files, rank, size)
    if os.path.isdir(path) or path.endswith(("/", os.sep, ".trace")):
        folder = path.rstrip("/" + os.sep) or path
        files = [manifests.rank_file(r) for r in range(size)]
        return RankTarget(os.path.join(folder, files[rank]), folder, files, rank, size)
    if size > 1:
        raise TraceDiffError(
            f"cannot record {path} from {size} ranks: each rank records its own file; give a "
            "folder ('run.trace') or a template with {rank} ('run.trace/rank-{rank:05d}.h5')")
    return None


def prepare(target: RankTarget):
    """Create the folder (every rank may race to)."""
    os.makedirs(target.folder, exist_ok=True)


def announce(target: RankTarget):
    """On rank 0, once its own file is open (an existing run it refused to overwrite keeps its
    manifest), write the manifest naming every rank's file."""
    if target.rank == 0:
        manifests.write(target.folder, target.world_size, target.files)


def run_and_record(model):
    """``(runner, module)``: a DistributedDataParallel wrapper is run (its hooks average the
    gradients) while the module inside it is recorded, under the same names as a plain run."""
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(model, DistributedDataParallel):
        return model, model.module
    return None, model


def data_parallel(runner, module) -> bool:
    """DDP, or FSDP2's ``fully_shard`` (whose activations are each rank's part of the batch)."""
    if runner is not None:
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch build without distributed
        return False
    return isinstance(module, FSDPModule)


class Placements:
    """The placement meta of each record this rank writes."""

    def __init__(self, shards=None, *, data_parallel=False, world_size=1):
        if shards is not None and not isinstance(shards, dict):
            raise TraceDiffError(
                f"shards= takes a dict of record-name globs to placements, e.g. "
                f"{{'mlp.up': 'Shard(-1)', 'mlp.down': 'Partial()'}}, got {type(shards).__name__}")
        self.rules = [(glob, parse(value, f"shards[{glob!r}]")) for glob, value in (shards or {}).items()]
        self.data_parallel = data_parallel
        self.world_size = world_size

    def meta(self, kind, name, tensor) -> dict:
        """Placement meta for a plain (non-DTensor) tensor."""
        placement = self._declared(kind, name)
        extra = {}
        if placement is None and self.data_parallel:
            if kind in DATA_PARALLEL_KINDS and tensor.dim() > 0:
                placement = Placement("shard", dim=0)
            elif kind == "loss":
                placement = Placement("partial", reduce="avg")
        if self.data_parallel and kind == "backward" and self.world_size > 1:
            # each rank's loss is the mean over its own part of the batch, the run's loss their
            # mean: dL/d(activation) on a rank is world_size times the run's
            extra["grad_divisor"] = self.world_size
        if placement is None:
            placement = REPLICATE
        return {"placement": str(placement), **extra}

    def _declared(self, kind, name):
        for glob, placement in self.rules:
            if fnmatch.fnmatchcase(name, glob):
                if kind == "backward" and placement.kind == "partial":
                    return REPLICATE   # the gradient of a partial sum reaches every term whole
                return placement
        return None


class RankWriter:
    """Wraps the HostWriter: a DTensor is written as its local shard, every record with its
    placement; the rest is the HostWriter's."""

    def __init__(self, writer, placements: Placements):
        self._writer = writer
        self.placements = placements

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def write(self, kind, name, tensor, call=None, **meta):
        local, placed = dtensor_local(tensor)
        if local is None:
            return   # this rank holds no part of it (a DTensor on a mesh without this rank)
        if placed is None:
            placed = self.placements.meta(kind, name, tensor)
        self._writer.write(kind, name, local, call=call, **meta, **placed)


def dtensor_local(tensor):
    """``(local tensor, placement meta)`` of a DTensor; ``(tensor, None)`` for a plain one."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return tensor, None
    if not isinstance(tensor, DTensor):
        return tensor, None
    mesh = tensor.device_mesh
    coord = mesh.get_coordinate()
    if coord is None:
        return None, None
    placements = [_placement(p) for p in tensor.placements]
    return tensor.to_local(), {"placement": text(placements), "mesh": list(mesh.shape),
                               "mesh_coord": [int(c) for c in coord],
                               "global_shape": list(tensor.shape)}


def _placement(p) -> Placement:
    """tracediff's Placement of a torch DTensor placement (Shard, Replicate, Partial)."""
    if p.is_shard():
        return Placement("shard", dim=int(p.dim))
    if p.is_partial():
        reduce = str(getattr(p, "reduce_op", "sum")).lower()
        return Placement("partial", reduce="avg" if "avg" in reduce else "sum")
    return REPLICATE
