"""The CUDA path: pinned host buffers and non-blocking copies, synchronised before writing.
Skipped where no GPU is present."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.adapters.torch.convert import HostWriter  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def model_on(device, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 11)).to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_records_are_bit_exact_with_device(tmp_path, dtype):
    model = model_on("cuda", dtype)
    x = torch.randn(3, 5, device="cuda").to(dtype)
    seen = {}
    model[0].register_forward_hook(lambda m, a, out: seen.setdefault("0", out.detach().clone()))
    out = tdt.record(model, x, tmp_path / "t.h5", loss_fn=lambda o: o.float().square().sum())
    trace = td.open(tmp_path / "t.h5")
    for record, tensor in [(trace.get("<root>"), out), (trace.get("0"), seen["0"]),
                           (trace.get("2.weight", kind="param_grad"), model[2].weight.grad)]:
        assert record.meta["device"] == "cuda:0"
        host = tensor.detach().cpu()
        expected = host.view(torch.int16).numpy() if dtype != torch.float32 else host.numpy()
        got = record.read()
        np.testing.assert_array_equal(got.view(np.int16) if dtype != torch.float32 else got, expected)


def test_cuda_outputs_and_gradients_bitwise_identical(tmp_path):
    def run(path=None):
        model = model_on("cuda")
        x = torch.randn(3, 5, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        loss_fn = lambda o: o.square().sum()  # noqa: E731
        out = tdt.record(model, x, path, loss_fn=loss_fn) if path else model(x)
        if path is None:
            loss_fn(out).backward()
        return [out.detach()] + [p.grad for p in model.parameters()]

    for a, b in zip(run(), run(tmp_path / "t.h5")):
        assert torch.equal(a, b)


def test_pending_copies_keep_execution_order_and_survive_inplace_updates(tmp_path):
    with td.Recorder(tmp_path / "t.h5", framework="torch") as rec:
        writer = HostWriter(rec)
        a = torch.arange(6.0, device="cuda")
        writer.write("forward", "gpu", a)
        cpu = torch.ones(3)
        writer.write("forward", "cpu", cpu)   # queued behind the GPU copy
        a.add_(100)                            # after the copy was enqueued: not recorded
        cpu.add_(100)
        writer.close()
    trace = td.open(tmp_path / "t.h5")
    assert [r.name for r in trace] == ["gpu", "cpu"]
    np.testing.assert_array_equal(trace.get("gpu").read(), np.arange(6.0, dtype=np.float32))
    np.testing.assert_array_equal(trace.get("cpu").read(), np.ones(3, np.float32))


def test_cuda_recording_stats_only(tmp_path):
    model = model_on("cuda")
    with tdt.recording(model, tmp_path / "t.h5", every=2):
        for step in range(4):
            model(torch.randn(3, 5, device="cuda")).sum().backward()
    trace = td.open(tmp_path / "t.h5")
    assert trace.steps == [0, 2]
    assert {r.meta.get("device") for r in trace.records("forward")} == {"cuda:0"}
