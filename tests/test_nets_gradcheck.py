"""The NumPy nets' hand-written backward against central finite differences (no torch needed)."""
import numpy as np
import pytest

from tracediff.demo import numpy_nets

NETS = ("mlp", "cnn", "transformer")


def _numeric_grad(loss_of, array, indices, h=1e-6):
    out = []
    for index in indices:
        saved = array[index]
        array[index] = saved + h
        up = loss_of()
        array[index] = saved - h
        down = loss_of()
        array[index] = saved
        out.append((up - down) / (2 * h))
    return np.array(out)


def _sample(shape, rng, n=6):
    flat = rng.choice(int(np.prod(shape)), size=min(n, int(np.prod(shape))), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


@pytest.mark.parametrize("net", NETS)
def test_parameter_gradients_match_finite_differences(net):
    rng = np.random.default_rng(7)
    port = numpy_nets.build(net, numpy_nets.init_params(net))
    x, y = numpy_nets.make_inputs(net)
    port.loss_and_grads(x, y)
    analytic = port.param_grads()
    for name, value in port.state.items():
        indices = _sample(value.shape, rng)
        numeric = _numeric_grad(lambda: port.loss_and_grads(x, y)[0], value, indices)
        expected = np.array([analytic[name][i] for i in indices])
        np.testing.assert_allclose(expected, numeric, rtol=1e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("net", NETS)
def test_input_side_gradient_matches_finite_differences(net):
    # dL/d(first layer output), checked by perturbing that output's producer's bias
    rng = np.random.default_rng(11)
    port = numpy_nets.build(net, numpy_nets.init_params(net))
    x, y = numpy_nets.make_inputs(net)
    x = x.astype(np.float64)
    _, grads = port.loss_and_grads(x, y)
    first = port.outputs[0][0]
    bias = port.state[f"{first}.bias"]
    axes = tuple(i for i in range(grads[first].ndim) if i != (1 if net == "cnn" else grads[first].ndim - 1))
    expected = grads[first].sum(axis=axes)
    indices = _sample(bias.shape, rng)
    numeric = _numeric_grad(lambda: port.loss_and_grads(x, y)[0], bias, indices)
    np.testing.assert_allclose(expected[[i[0] for i in indices]], numeric, rtol=1e-5, atol=1e-8)
