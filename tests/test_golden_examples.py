"""The project's own example models pinned by golden traces committed under
traces/test_golden_examples/: the demo nets (NumPy float64 ports and their torch references)
must match them, and every planted bug of the demo catalogue must fail its net's golden trace
naming the layer the catalogue says."""
import shutil
from pathlib import Path

import pytest

from tracediff.demo import CATALOGUE, DIMS, build, init_params, make_inputs
from tracediff.golden import GoldenTrace, Ledger

NETS = tuple(DIMS)
MODULE = "test_golden_examples"


def numpy_net(net, bugs=()):
    """fn(rec, inputs) recording the NumPy demo net, and its inputs."""
    model = build(net, init_params(net), bugs=bugs)
    x, y = make_inputs(net)

    def run(rec, inputs):
        model.record(rec, inputs["x"], inputs["y"])
    return run, {"x": x, "y": y}


@pytest.mark.parametrize("net", NETS)
def test_numpy_demo_net(golden_trace, net):
    fn, inputs = numpy_net(net)
    golden_trace.check(fn, inputs, dims=DIMS[net], model_name=f"demo {net} (NumPy port)")


@pytest.mark.parametrize("net", NETS)
def test_torch_demo_net(golden_trace, net):
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    from tracediff.demo import torch_nets

    x, y = make_inputs(net)
    target = torch.from_numpy(y).reshape(-1)
    golden_trace.check(torch_nets.build(net), torch.from_numpy(x), dims=DIMS[net],
                       loss_fn=lambda out: F.cross_entropy(out.reshape(-1, out.shape[-1]), target))


@pytest.mark.parametrize("bug", CATALOGUE, ids=lambda bug: bug.id)
def test_planted_bug_fails_its_golden_trace_naming_the_layer(bug, golden_trace, tmp_path):
    committed = Path(golden_trace.path()).with_name(f"test_numpy_demo_net[{bug.net}].h5")
    shutil.copy(committed, tmp_path / "golden.h5")
    messages = []
    checker = GoldenTrace((".", "golden"), Ledger(str(tmp_path)), fail=messages.append)
    fn, inputs = numpy_net(bug.net, bugs=[bug.id])
    assert checker.check(fn, inputs, dims=DIMS[bug.net], model_name=f"demo {bug.net} ({bug.id})") is None
    (text,) = messages
    assert f"\nfirst diverging {bug.where}: {bug.layer} " in text, text
    assert (tmp_path / "golden.obtained.h5").exists()
