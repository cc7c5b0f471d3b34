"""Meta ``inputs``: every forward record names the records it consumed (the trace's dataflow)."""
import numpy as np
import pytest
import torch
from torch import nn

import tracediff as td
from tracediff.adapters import torch as tdt
from tracediff.errors import TraceDiffError


def edge(name, call=0, kind="forward"):
    return {"kind": kind, "name": name, "call": call}


class Residual(nn.Module):
    """torchvision's BasicBlock pattern: ``out += identity`` in place, then ReLU."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Linear(width, width)
        self.conv2 = nn.Linear(width, width)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.conv2(self.relu(self.conv1(x)))
        out += x
        return self.relu(out)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.block = Residual(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.block(self.block(self.stem(x)))   # one module called twice
        return self.head(h.view(h.shape[0], -1))


@pytest.mark.parametrize("grad", [True, False])
def test_torch_residual_and_shared_module(tmp_path, grad):
    torch.manual_seed(0)
    path = tmp_path / "net.h5"
    with torch.set_grad_enabled(grad):
        tdt.record(Net(), torch.randn(2, 3), path, loss_fn=(lambda o: o.sum()) if grad else None)
    trace = td.open(path)

    def inputs(name, call=0):
        return trace.get(name, call=call).meta.get("inputs")

    assert inputs("stem") == [edge("input", kind="input")]
    assert inputs("block") == [edge("stem")]
    assert inputs("block.conv1", 1) == [edge("block", 0)]      # the second call reads the first's output
    assert inputs("head") == [edge("block", 1)]                # through a view
    if grad:
        # the ReLU after ``out += x`` consumed both branches: through autograd's graph
        assert inputs("block.relu", 1) == [edge("block.conv2"), edge("stem")]
        assert inputs("block.relu", 3) == [edge("block.conv2", 1), edge("block", 0)]
        assert trace.get("loss", kind="loss").meta["inputs"] == [edge("<root>")]
    else:
        # without autograd the in-place add cannot be traced: the stale producer, honestly
        assert inputs("block.relu", 1) == [edge("block.conv2")]


def test_numpy_default_is_the_previous_record_and_explicit_inputs(tmp_path):
    x = np.ones((2, 3), np.float32)
    with td.Recorder(tmp_path / "np.h5") as rec:
        rec.input("x", x)
        rec.forward("fc1", x)
        rec.forward("act", x)
        rec.forward("fc1", x)                             # second call of fc1
        rec.forward("add", x, inputs=["act", {"kind": "forward", "name": "fc1", "call": 0}, "x"])
        rec.forward("const", x, inputs=[])
        with pytest.raises(TraceDiffError, match="inputs= takes record names"):
            rec.forward("bad", x, inputs=[3])
    trace = td.open(tmp_path / "np.h5")
    assert trace.get("fc1").meta["inputs"] == [edge("x", kind="input")]
    assert trace.get("act").meta["inputs"] == [edge("fc1")]
    assert trace.get("fc1", call=1).meta["inputs"] == [edge("act")]
    assert trace.get("add").meta["inputs"] == [edge("act"), edge("fc1"), edge("x", kind="input")]
    assert trace.get("const").meta["inputs"] == []


def test_torch_op_level_ops_consume_ops_and_not_parameters(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    tdt.record(model, torch.randn(2, 3), tmp_path / "op.h5", level="op", loss_fn=lambda o: o.sum())
    trace = td.open(tmp_path / "op.h5")
    first = trace.get("0/linear#0").meta
    assert first["inputs"] == [edge("input", kind="input")] and "inputs_partial" not in first
    assert trace.get("1/relu#0").meta["inputs"] == [edge("0")]     # the module record, the later one
    assert trace.get("2/linear#0").meta["inputs"] == [edge("1")]


def test_the_dataflow_keeps_no_activation_alive(tmp_path):
    """Weak references: under torch.no_grad() an activation is freed once consumed, as it is
    without recording (a large model's inference must not hold every activation)."""
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    seen, alive = [], []
    model[1].register_forward_hook(lambda m, args, out: seen.append(weakref.ref(out)))

    def check(m, args):
        gc.collect()
        alive.append(seen[0]() is not None)
    model[4].register_forward_pre_hook(check)
    with torch.no_grad():
        tdt.record(model, torch.randn(2, 3), tmp_path / "m.h5")
    assert alive == [False]
    assert td.open(tmp_path / "m.h5").get("2").meta["inputs"] == [edge("1")]
