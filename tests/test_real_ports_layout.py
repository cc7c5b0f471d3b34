"""Issue 19, layouts on real sizes: a channels-last Keras 3 port of a torch CNN with square
images, 3x3 kernels and as many channels in as out comes out clean; a weight perturbed at 20%,
50% and 80% depth is named at its layer; H and W swapped on a square input is a `layout`
finding, not a tie; size-1 axes are no layout."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import tracediff as td  # noqa: E402

from diff_helpers import rng, write  # noqa: E402
from real_ports import C, C_IN, images, keras_cnn, record_keras, record_torch, torch_cnn  # noqa: E402

# 12 forward (3 convs, 4 ReLUs, pool, flatten, 2 dense, <root>), input, loss, the 12 forward
# records' gradients, 10 parameters and their 10 gradients
CLEAN_PAIRS = 46


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = torch_cnn()
    return model, record_torch(model, tmp_path_factory.mktemp("torch") / "cnn.h5")


def test_square_channels_last_port_is_clean(reference, tmp_path):
    model, torch_path = reference
    report = td.diff(record_keras(keras_cnn(model), tmp_path / "port.h5"), torch_path)
    assert report.ok
    assert len(report.pairs) == CLEAN_PAIRS
    assert report.unmatched == {"a": [], "b": []}
    statuses = {p.status for p in report.pairs}
    assert statuses == {"ok", "layout"}
    by_name = {(p.kind, p.b_name): p for p in report.pairs}
    conv2 = by_name[("forward", "conv2")]
    assert conv2.hint.startswith("a is [2, 6, 6, 8] (NHWC), b is [2, 8, 6, 6] (NCHW): values match "
                                 "after permuting axes (0, 3, 1, 2)")
    # the 3x3 kernel HWIO against OIHW with 8 channels in and out: one of 12 candidates
    kernel = by_name[("param", "conv2.weight")]
    assert (kernel.status, kernel.diverged) == ("layout", False)
    assert "permuting axes (3, 2, 0, 1) (declared layouts HWIO and OIHW)" in kernel.hint
    # the Dense kernel after the flatten of the permuted map, rows in H, W, C order
    dense = by_name[("param", "fc1.weight")]
    assert (dense.status, dense.diverged) == ("layout", False)
    assert "flattened from [3, 3, 8, 16]" in dense.hint


@pytest.mark.parametrize("layer", ["conv2", "conv3", "fc1"])   # 20%, 50%, 80% depth
def test_a_perturbed_weight_is_named_at_its_layer(reference, tmp_path, layer):
    model, torch_path = reference
    report = td.diff(record_keras(keras_cnn(model, perturb=layer), tmp_path / "port.h5"), torch_path)
    assert not report.ok
    first = report.first_divergence
    assert first.forward.b_name == layer
    assert first.forward.introduced["verdict"] == "introduced here"
    assert [p.b_name for p in report.pairs if p.kind == "param" and p.diverged] == [f"{layer}.weight"]
    # compared through the layout the port follows: the error is the perturbation's, not a
    # misread axis order
    assert first.forward.rel_l2 < 0.03
    # backward: the gradients reaching the layer from the loss diverge (its output moved), and
    # the first parameter gradient to diverge is one that the perturbed weight feeds
    assert first.backward is not None and first.backward.b_index > first.forward.b_index
    # and every record before the layer (in the forward) still matches
    before = [p for p in report.pairs if p.kind == "forward" and p.b_index < first.forward.b_index]
    assert before and not any(p.diverged for p in before)


def test_height_and_width_swapped_on_a_square_input_is_a_layout_finding(reference, tmp_path):
    model, torch_path = reference
    swapped = images().transpose(0, 3, 2, 1)                   # N, W, H, C: a transposed image
    report = td.diff(record_keras(keras_cnn(model), tmp_path / "port.h5", swapped), torch_path)
    assert not report.ok
    inp = next(p for p in report.pairs if p.kind == "input")
    assert (inp.status, inp.diverged) == ("layout", True)
    assert inp.hint.endswith("values match after permuting axes (0, 3, 2, 1)")
    assert report.first_divergence.forward.b_name == "conv1"


def test_declared_layout_contradicted_by_the_values_is_a_finding(tmp_path):
    # a channels-last map that declares NHWC but holds N, W, H, C (square: the shapes agree)
    nchw = rng(7).standard_normal((2, 5, 4, 4))
    a = write(tmp_path / "a.h5", [("forward", "conv", nchw.transpose(0, 3, 2, 1), {"layout": "NHWC"})], dims={})
    b = write(tmp_path / "b.h5", [("forward", "conv", nchw, {"layout": "NCHW"})], dims={})
    pair = td.diff(a, b).first_divergence.forward
    assert (pair.status, pair.diverged) == ("layout", True)
    assert "permuting axes (0, 3, 2, 1); this contradicts the declared layouts NHWC and NCHW" in pair.hint


def test_a_tie_prefers_the_declared_layout(tmp_path):
    # zero-initialised map: every assignment of H and W reproduces it; the declared one is taken
    zeros = np.zeros((2, 5, 4, 4))
    a = write(tmp_path / "a.h5", [("forward", "conv", zeros.transpose(0, 2, 3, 1), {"layout": "NHWC"})], dims={})
    b = write(tmp_path / "b.h5", [("forward", "conv", zeros, {"layout": "NCHW"})], dims={})
    report = td.diff(a, b)
    assert report.ok
    pair = report.pairs[0]
    assert (pair.status, pair.diverged) == ("layout", False)
    assert "permuting axes (0, 3, 1, 2)" in pair.hint and "the declared layout chosen" in pair.hint


def test_a_tie_follows_the_producing_pair(tmp_path):
    x = rng(8).standard_normal((2, 5, 4, 4))
    const = np.ones((2, 5, 4, 4))
    a = write(tmp_path / "a.h5", [("forward", "conv", x.transpose(0, 2, 3, 1), {"layout": "NHWC"}),
                                  ("forward", "norm", const.transpose(0, 2, 3, 1))], dims={})
    b = write(tmp_path / "b.h5", [("forward", "conv", x, {"layout": "NCHW"}), ("forward", "norm", const)], dims={})
    pair = next(p for p in td.diff(a, b).pairs if p.b_name == "norm")
    assert "permuting axes (0, 3, 1, 2)" in pair.hint and "the one of forward conv, which produced it" in pair.hint
    assert not pair.diverged


def test_plain_keras_conv_kernel_against_torch_conv_weight(tmp_path):
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(C_IN, C, 3)
    layer = keras.layers.Conv2D(C, 3)
    layer.build((None, 6, 6, C_IN))
    layer.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()])
    kernel = np.asarray(layer.kernel)
    a = write(tmp_path / "a.h5", [("param", "conv/kernel", kernel, {"layout": "HWIO", "role": "weight"})], dims={})
    b = write(tmp_path / "b.h5", [("param", "conv/kernel", conv.weight.detach().numpy(),
                                   {"layout": "OIHW", "role": "weight"})], dims={})
    pair = td.diff(a, b).pairs[0]
    assert (pair.status, pair.diverged) == ("layout", False)


@pytest.mark.parametrize("shape_a, shape_b", [((1, 7), (7,)), ((1, 1, 1, 7), (7,)), ((7, 512), (7, 512, 1, 1))])
def test_size_one_axes_with_the_same_values_in_order_are_ok(tmp_path, shape_a, shape_b):
    values = rng(9).standard_normal(shape_b)
    a = write(tmp_path / "a.h5", [("param", "fc.bias", values.reshape(shape_a))], dims={})
    b = write(tmp_path / "b.h5", [("param", "fc.bias", values)], dims={})
    report = td.diff(a, b)
    assert report.ok and report.pairs[0].status == "ok"
    assert report.pairs[0].hint.endswith("the same values in the same order (they differ in size-1 axes only)")
    moved = write(tmp_path / "c.h5", [("param", "fc.bias", values.reshape(shape_a) * 1.01)], dims={})
    assert td.diff(moved, b).pairs[0].diverged
