"""Each hint, triggered by a synthetic pair of traces, names the right layer and the mistake."""
import numpy as np
import pytest

import tracediff as td
from tracediff.compare.activations import gelu, gelu_tanh, relu, sigmoid, softmax

from diff_helpers import chain, rng


def layers(seed=0):
    g = rng(seed)
    x = g.standard_normal((3, 7))
    h = x @ g.standard_normal((7, 11)) + g.standard_normal(11)
    return {"fc1": x, "fc2": h, "act": np.tanh(h), "fc3": np.tanh(h) @ g.standard_normal((11, 5))}


def first(tmp_path, candidate, reference=None, **kw):
    reference = reference or layers()
    a, b = chain(tmp_path, reference, candidate, **kw)
    report = td.diff(a, b)
    assert not report.ok
    return report.first_divergence.forward


def test_constant_scale_factor(tmp_path):
    ref = layers()
    pair = first(tmp_path, {"fc2": ref["fc2"] / np.sqrt(8.0)}, ref)
    assert pair.b_name == "fc2"
    assert pair.status == "diverged"
    assert pair.hint.startswith("a = 0.353553 x b: a constant scale factor")


def test_sign_flip(tmp_path):
    ref = layers()
    pair = first(tmp_path, {"act": -ref["act"]}, ref)
    assert pair.b_name == "act"
    assert pair.hint.startswith("a = -b: a sign flip")


def test_constant_offset(tmp_path):
    ref = layers()
    pair = first(tmp_path, {"fc2": ref["fc2"] + 0.25}, ref)
    assert pair.b_name == "fc2"
    assert pair.hint.startswith("a = b + 0.25: a constant offset")


def test_missing_bias_is_an_offset_per_feature(tmp_path):
    ref = layers()
    bias = rng(3).standard_normal(11)
    pair = first(tmp_path, {"fc2": ref["fc2"] - bias}, ref)
    assert pair.b_name == "fc2"
    assert pair.hint.startswith("missing or wrong bias: a - b is a constant offset per index along axis 1 (hidden)")


def test_transpose_of_equal_sized_axes(tmp_path):
    g = rng(1)
    ref = {"x": g.standard_normal((3, 7)), "attn": g.standard_normal((3, 13, 13))}
    pair = first(tmp_path, {"attn": ref["attn"].transpose(0, 2, 1)}, ref)
    assert pair.b_name == "attn"
    assert pair.hint.startswith("a is b with axes 1 and 2 swapped (a transpose")


def test_permutation_of_the_same_values(tmp_path):
    ref = layers()
    shuffled = rng(5).permutation(ref["fc2"].reshape(-1)).reshape(3, 11)
    pair = first(tmp_path, {"fc2": shuffled}, ref)
    assert pair.hint.startswith("a holds the same values as b in a different order")


@pytest.mark.parametrize("name,f", [("sigmoid", sigmoid), ("tanh", np.tanh), ("softmax", softmax)])
def test_activation_applied_twice(tmp_path, name, f):
    ref = layers()
    ref["act"] = f(ref["fc2"])
    pair = first(tmp_path, {"act": f(ref["act"])}, ref)
    assert pair.b_name == "act"
    assert pair.hint.startswith(f"a = {name}(b): a applies an extra {name}")


def test_activation_missing(tmp_path):
    ref = layers()
    ref["act"] = relu(ref["fc2"])
    pair = first(tmp_path, {"act": ref["fc2"]}, ref)
    assert pair.b_name == "act"
    assert pair.hint == "b = relu(a): a is missing the relu activation"


def test_wrong_activation_against_the_layer_input(tmp_path):
    ref = layers()
    ref["act"] = gelu(ref["fc2"])
    pair = first(tmp_path, {"act": gelu_tanh(ref["fc2"])}, ref)
    assert pair.b_name == "act"
    assert pair.hint == ("wrong activation: a applies gelu (tanh approximation) to the layer's "
                         "input where the reference applies gelu")


def test_shift_by_one_position(tmp_path):
    g = rng(2)
    ref = {"embed": g.standard_normal((3, 13, 7)), "conv": g.standard_normal((3, 13, 7))}
    shifted = np.concatenate([np.zeros((3, 1, 7)), ref["conv"][:, :-1]], axis=1)
    pair = first(tmp_path, {"conv": shifted}, ref)
    assert pair.b_name == "conv"
    assert pair.hint == ("a is b shifted by one position along axis 1 (seq): a[i] = b[i-1] "
                         "(off-by-one, padding on the wrong side, or a causal shift)")


def test_only_some_channels_wrong(tmp_path):
    g = rng(4)
    ref = {"x": g.standard_normal((3, 7)), "conv": g.standard_normal((3, 11, 5, 7))}
    bad = ref["conv"].copy()
    bad[:, [2, 6]] = g.standard_normal((3, 2, 5, 7))
    pair = first(tmp_path, {"conv": bad}, ref)
    assert pair.b_name == "conv"
    assert pair.hint == "only indices [2, 6] along axis 1 (hidden) differ (2 of 11); the others match"


def test_single_elements_wrong(tmp_path):
    ref = layers()
    bad = ref["fc3"].copy()
    bad[1, 3] += 1.0
    pair = first(tmp_path, {"fc3": bad}, ref)
    assert pair.b_name == "fc3"
    assert pair.hint == "only 1 element(s) differ, at [1, 3]"


def test_precision_level_differences(tmp_path):
    ref = layers()
    a, b = chain(tmp_path, ref, {"fc2": ref["fc2"].astype(np.float32)})
    report = td.diff(a, b, rtol=1e-9, atol=0)
    pair = report.first_divergence.forward
    assert pair.b_name == "fc2"
    assert pair.hint.startswith("differences at the level of floating-point precision only")


def test_no_hint_without_evidence(tmp_path):
    ref = layers()
    pair = first(tmp_path, {"fc2": rng(11).standard_normal((3, 11))}, ref)
    assert pair.b_name == "fc2"
    assert pair.hint is None


def test_shift_along_two_axes_from_padding_on_one_side(tmp_path):
    g = rng(3)
    x = g.standard_normal((3, 7, 11, 13))
    ref = {"stem": g.standard_normal((3, 7)), "conv2": x}
    shifted = np.zeros_like(x)
    shifted[:, :, 1:, 1:] = x[:, :, :-1, :-1]
    pair = first(tmp_path, {"conv2": shifted}, ref, dims={"batch": 3, "channels": 7, "height": 11, "width": 13})
    assert pair.b_name == "conv2"
    assert pair.hint == ("a is b shifted by one position along axis 2 (height) and axis 3 (width): "
                         "a[i, j] = b[i-1, j-1] (off-by-one, padding on the wrong side, or a causal shift)")


def test_an_extra_activation_explains_a_layers_output_not_a_gradient():
    """tanh(b) for b is a port's extra activation in what a layer computes; a parameter or a
    gradient holding tanh of the reference's is no such mistake, and the hint says nothing of
    one (trying every activation on every diverged gradient was most of a GPT-2 diff)."""
    from tracediff.compare import hints
    b = rng(7).standard_normal((5, 11))
    assert hints.explain(np.tanh(b), b).startswith("a = tanh(b): a applies an extra tanh")
    for kind in ("param", "param_grad", "backward"):
        text = hints.explain(np.tanh(b), b, kind=kind)
        assert text is None or "tanh" not in text
