"""Real torch.distributed runs (gloo, CPU, one thread a rank) recorded into multi-rank traces,
and the one-process reference runs they are diffed against (tests/test_ranks.py).

Tensor parallelism is Megatron-style (plain tensors, placements declared with ``shards=``):
a column-parallel ``mlp.up`` whose output is Shard(-1), a row-parallel ``mlp.down`` whose
output is a Partial sum that ``mlp`` all-reduces. Data parallelism is DistributedDataParallel
and FSDP2 (``fully_shard``) over a model that pools over the sequence."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tracediff.adapters import torch as tdt
from tracediff.errors import TraceDiffError

TP_SHARDS = {"mlp.up": "Shard(-1)", "mlp.act": "Shard(-1)", "mlp.down": "Partial()",
             "mlp.up.weight": "Shard(0)", "mlp.up.bias": "Shard(0)", "mlp.down.weight": "Shard(1)"}


# -- tensor parallel (Megatron style) ---------------------------------------------------------
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.down = nn.Linear(16, 8, bias=False)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)
        self.mlp = MLP()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.mlp(self.ln(x)))


class _CopyToRanks(torch.autograd.Function):
    """Megatron's f: identity forward, all-reduce of the input gradient backward."""
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _ReduceFromRanks(torch.autograd.Function):
    """Megatron's g: all-reduce forward, identity backward."""
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


class ColumnParallelLinear(nn.Module):
    def __init__(self, full: nn.Linear, rank, world):
        super().__init__()
        self.weight = nn.Parameter(full.weight.detach().chunk(world, 0)[rank].clone())
        self.bias = nn.Parameter(full.bias.detach().chunk(world, 0)[rank].clone())

    def forward(self, x):
        return F.linear(_CopyToRanks.apply(x), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """Its output is this rank's term of the sum (Partial); the all-reduce is the caller's."""
    def __init__(self, full: nn.Linear, rank, world):
        super().__init__()
        self.weight = nn.Parameter(full.weight.detach().chunk(world, 1)[rank].clone())

    def forward(self, x):
        return F.linear(x, self.weight)


class ParallelMLP(nn.Module):
    def __init__(self, full: MLP, rank, world, all_reduce=True):
        super().__init__()
        self.up = ColumnParallelLinear(full.up, rank, world)
        self.act = nn.GELU()
        self.down = RowParallelLinear(full.down, rank, world)
        self.all_reduce = all_reduce

    def forward(self, x):
        y = self.down(self.act(self.up(x)))
        return _ReduceFromRanks.apply(y) if self.all_reduce else y   # the planted bug: no reduce


def tp_reference():
    torch.manual_seed(0)
    return Block(), torch.randn(2, 3, 8), torch.randn(2, 3, 4)


def tp_parallel(rank, world, all_reduce=True):
    model, x, target = tp_reference()
    model.mlp = ParallelMLP(model.mlp, rank, world, all_reduce)
    return model, x, target


# -- data parallel ----------------------------------------------------------------------------
class Pooled(nn.Module):
    """Per-token layers, a mean over the sequence, a head: splitting the batch along the
    sequence changes the result."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.act = nn.Tanh()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.act(self.embed(x)).mean(1))


def dp_reference():
    torch.manual_seed(0)
    return Pooled(), torch.randn(4, 6, 8), torch.randn(4, 3)


def encoder_reference():
    """torch's own transformer encoder (no dropout), for FSDP2."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0,
                                       batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), \
        torch.randn(4, 5, 8), torch.randn(4, 5, 8)


def mse(target):
    return lambda out: F.mse_loss(out, target)


# -- the runs ---------------------------------------------------------------------------------
def run_all(rank, world, port, root):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        for name, all_reduce in (("tp.trace", True), ("tp_no_reduce.trace", False)):
            model, x, target = tp_parallel(rank, world, all_reduce)
            tdt.record(model, x, os.path.join(root, name), loss_fn=mse(target), shards=TP_SHARDS)
        for name, split_axis, diverge in (("ddp.trace", 0, False), ("ddp_axis.trace", 1, False),
                                          ("ddp_replica.trace", 0, True)):
            model, x, target = dp_reference()
            ddp = nn.parallel.DistributedDataParallel(model)
            if diverge and rank == 1:
                with torch.no_grad():   # the planted bug: one rank's weights drift from the rest
                    model.head.weight.add_(0.05)
            # the planted bug of ddp_axis: the batch split along the sequence (forward only: its
            # rows no longer match the targets')
            local_x = x.chunk(world, split_axis)[rank]
            loss_fn = mse(target.chunk(world, 0)[rank]) if split_axis == 0 else None
            tdt.record(ddp, local_x, os.path.join(root, name), loss_fn=loss_fn)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                       parallelize_module)
        model, x, target = tp_reference()
        # parameters and the sharded activations are DTensors: nothing to declare
        parallelize_module(model, init_device_mesh("cpu", (world,)),
                           {"mlp.up": ColwiseParallel(use_local_output=False),
                            "mlp.down": RowwiseParallel()})
        tdt.record(model, x, os.path.join(root, "dtensor_tp.trace"), loss_fn=mse(target))
        model, x, target = dp_reference()
        ddp = nn.parallel.DistributedDataParallel(model)
        with tdt.recording(ddp, os.path.join(root, "ddp_loop.trace"), values=True) as session:
            loss = mse(target.chunk(world, 0)[rank])(ddp(x.chunk(world, 0)[rank]))
            session.loss(loss)
            loss.backward()
        try:   # several ranks cannot share one file
            tdt.record(Pooled(), torch.randn(1, 2, 8), os.path.join(root, f"plain-{rank}.h5"))
        except TraceDiffError as exc:
            if rank == 0:
                with open(os.path.join(root, "refusal.txt"), "w") as handle:
                    handle.write(str(exc))
        from torch.distributed.fsdp import fully_shard
        model, x, target = encoder_reference()
        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        tdt.record(model, x.chunk(world, 0)[rank], os.path.join(root, "fsdp.trace/rank-{rank}.h5"),
                   loss_fn=mse(target.chunk(world, 0)[rank]))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(root, world=2, start_method="fork"):
    """Run ``run_all`` on ``world`` ranks. Forked, not spawned: a spawned rank imports torch
    again (~6 s on a loaded 2-core machine); the ranks use one thread each, so the parent's
    thread pools are never needed in them."""
    import torch.multiprocessing as mp
    mp.start_processes(run_all, args=(world, free_port(), str(root)), nprocs=world,
                       start_method=start_method)
