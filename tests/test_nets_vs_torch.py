"""The NumPy ports' hand-written forward and backward against torch autograd, elementwise."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tracediff.demo import numpy_nets, torch_nets  # noqa: E402

NETS = ("mlp", "cnn", "transformer")


def _close(mine, ref, what):
    # float64 against float32: relative to the tensor's scale, plus a floor for gradients that
    # are exactly zero in theory (attn.k.bias: softmax ignores a per-row constant) where
    # float32 leaves ~1e-9 of rounding noise.
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5 * scale + 1e-8, err_msg=what)


@pytest.fixture(scope="module", params=NETS)
def both(request):
    net = request.param
    model = torch_nets.build(net)
    x, y = numpy_nets.make_inputs(net)
    loss, forwards, grads = torch_nets.loss_and_grads(model, x, y)
    port = numpy_nets.build(net, torch_nets.state_dict_float64(model))
    port_loss, port_grads = port.loss_and_grads(x, y)
    return net, model, (loss, forwards, grads), (port, port_loss, port_grads)


def test_same_layers_in_the_same_order(both):
    _, _, (_, forwards, _), (port, _, _) = both
    assert [n for n, _ in port.outputs] == [n for n, _ in forwards]


def test_forward_outputs_and_loss_match(both):
    _, _, (loss, forwards, _), (port, port_loss, _) = both
    outputs = dict(port.outputs)
    for name, ref in forwards:
        assert outputs[name].shape == ref.shape, name
        _close(outputs[name], ref, f"forward {name}")
    assert port_loss == pytest.approx(float(loss), rel=1e-6)


def test_output_gradients_match_autograd(both):
    _, _, (_, forwards, grads), (_, _, port_grads) = both
    for name, _ in forwards:
        _close(port_grads[name], grads[name], f"backward {name}")


def test_parameter_gradients_match_autograd(both):
    _, model, _, (port, _, _) = both
    mine = port.param_grads()
    for name, param in model.named_parameters():
        assert mine[name].shape == tuple(param.shape), name
        _close(mine[name], param.grad.numpy(), f"param_grad {name}")


def test_reference_trace_records_every_module_in_the_port_order(tmp_path):
    import tracediff as td
    model = torch_nets.build("transformer")
    x, y = numpy_nets.make_inputs("transformer")
    torch_nets.record(model, "transformer", x, y, tmp_path / "ref.h5")
    port = numpy_nets.build("transformer", torch_nets.state_dict_float64(model))
    port.record_to(tmp_path / "port.h5", x, y)
    ref, mine = td.open(tmp_path / "ref.h5"), td.open(tmp_path / "port.h5")
    assert [(r.kind, r.name) for r in ref] == [(r.kind, r.name) for r in mine]
    assert ref.dims == mine.dims == numpy_nets.DIMS["transformer"]
    assert ref.get("fc1.weight", kind="param").meta["role"] == "weight"
    assert ref.get("attn.scores").meta["op_type"] == "Scores"
