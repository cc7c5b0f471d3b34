"""Shapes and layouts: permutations found and applied, followed through a flatten, explained
with the trace's named dims, and refused where sizes collide."""

import numpy as np

import tracediff as td

from diff_helpers import rng, write

IMG = {"batch": 3, "height": 5, "width": 7, "channels": 11}


def images(seed=0):
    g = rng(seed)
    x = g.standard_normal((3, 2, 5, 7))
    nchw = g.standard_normal((3, 11, 5, 7))
    return x, nchw


def test_nhwc_against_nchw_is_a_layout_divergence(tmp_path):
    x, nchw = images()
    a = write(tmp_path / "a.h5", [("forward", "stem", x), ("forward", "conv", nchw.transpose(0, 2, 3, 1))], dims=IMG)
    b = write(tmp_path / "b.h5", [("forward", "stem", x), ("forward", "conv", nchw)], dims=IMG)
    report = td.diff(a, b)
    pair = report.first_divergence.forward
    assert pair.b_name == "conv" and pair.status == "layout" and pair.diverged
    assert pair.hint == ("a is [batch, height, width, channels] (NHWC), b is [batch, channels, "
                         "height, width] (NCHW): values match after permuting axes (0, 3, 1, 2)")
    assert pair.stats["max_abs"] == 0.0
    assert not report.ok


def test_declared_layouts_mapping_onto_each_other_are_not_a_divergence(tmp_path):
    x, nchw = images()
    a = write(tmp_path / "a.h5", [("forward", "stem", x),
                                  ("forward", "conv", nchw.transpose(0, 2, 3, 1), {"layout": "NHWC"})], dims=IMG)
    b = write(tmp_path / "b.h5", [("forward", "stem", x), ("forward", "conv", nchw, {"layout": "NCHW"})], dims=IMG)
    report = td.diff(a, b)
    assert report.ok
    conv = next(p for p in report.pairs if p.b_name == "conv")
    assert conv.status == "layout" and not conv.diverged
    assert conv.hint.endswith("(declared layouts NHWC and NCHW)")


def test_declared_layouts_that_do_not_map_still_diverge(tmp_path):
    x, nchw = images()
    a = write(tmp_path / "a.h5", [("forward", "conv", nchw.transpose(0, 2, 3, 1), {"layout": "NCHW"})], dims=IMG)
    b = write(tmp_path / "b.h5", [("forward", "conv", nchw, {"layout": "NCHW"})], dims=IMG)
    report = td.diff(a, b)
    assert not report.ok and report.first_divergence.forward.status == "layout"


def test_permutation_followed_through_a_flatten(tmp_path):
    x, nchw = images()
    ref = [("forward", "stem", x), ("forward", "flatten", nchw.reshape(3, -1))]
    cand = [("forward", "stem", x), ("forward", "flatten", nchw.transpose(0, 2, 3, 1).reshape(3, -1))]
    report = td.diff(write(tmp_path / "a.h5", cand, dims=IMG), write(tmp_path / "b.h5", ref, dims=IMG))
    pair = report.first_divergence.forward
    assert pair.b_name == "flatten" and pair.status == "layout" and pair.diverged
    assert pair.shape_a == pair.shape_b == [3, 385]
    assert pair.hint == ("a is [batch, height*width*channels] flattened from [batch, height, width, "
                         "channels], b is [batch, height*width*channels] flattened from [batch, "
                         "channels, height, width]: values match after un-flattening a and "
                         "permuting axes (0, 3, 1, 2) (a flatten/reshape in a different axis order)")


def test_partly_flattened_tensors_of_different_shapes(tmp_path):
    _, nchw = images()
    a = write(tmp_path / "a.h5", [("forward", "feat", nchw.transpose(0, 2, 3, 1).reshape(3, 5, 77))], dims=IMG)
    b = write(tmp_path / "b.h5", [("forward", "feat", nchw.reshape(3, 11, 35))], dims=IMG)
    pair = td.diff(a, b).first_divergence.forward
    assert pair.status == "layout"
    assert pair.hint == ("a is [batch, height, width*channels] flattened from [batch, height, width, "
                         "channels], b is [batch, channels, height*width] flattened from [batch, channels, "
                         "height, width]: values match after un-flattening a and permuting axes (0, 3, 1, 2) "
                         "(a flatten/reshape in a different axis order)")


def test_plain_permutation_of_partly_flattened_axes(tmp_path):
    _, nchw = images()
    a = write(tmp_path / "a.h5", [("forward", "feat", nchw.transpose(0, 2, 3, 1).reshape(3, 35, 11))], dims=IMG)
    b = write(tmp_path / "b.h5", [("forward", "feat", nchw.reshape(3, 11, 35))], dims=IMG)
    pair = td.diff(a, b).first_divergence.forward
    assert pair.status == "layout"
    assert pair.hint == ("a is [batch, height*width, channels], b is [batch, channels, height*width]: "
                         "values match after permuting axes (0, 2, 1)")


def test_swapped_axes_explained_with_named_dims(tmp_path):
    g = rng(1)
    dims = {"batch": 3, "seq": 5, "hidden": 7}
    b_val = g.standard_normal((3, 5, 7))
    a_val = g.standard_normal((3, 7, 5))         # wrong values too: not a layout
    report = td.diff(write(tmp_path / "a.h5", [("forward", "proj", a_val)], dims=dims),
                     write(tmp_path / "b.h5", [("forward", "proj", b_val)], dims=dims))
    pair = report.first_divergence.forward
    assert pair.status == "shape_mismatch"
    assert pair.hint.startswith("a is [batch, hidden, seq], b is [batch, seq, hidden]: axes 1 and 2 swapped; "
                                "values differ even after permuting")
    assert pair.stats["rel_l2"] > 0.5


def test_colliding_dims_are_told_apart_by_the_values(tmp_path):
    # issue 19 changed this: equal sizes (a square image) no longer refuse; each assignment of
    # the equal-sized axes is a candidate and the values pick the one that reproduces them
    g = rng(2)
    dims = {"batch": 3, "height": 5, "width": 5, "channels": 7}
    b_val = g.standard_normal((3, 7, 5, 5))
    report = td.diff(write(tmp_path / "a.h5", [("forward", "conv", b_val.transpose(0, 2, 3, 1))], dims=dims),
                     write(tmp_path / "b.h5", [("forward", "conv", b_val)], dims=dims))
    pair = report.first_divergence.forward
    assert (pair.status, pair.diverged) == ("layout", True)
    assert pair.hint == ("a is [batch, height, height, channels], b is [batch, channels, height, height]: "
                         "values match after permuting axes (0, 3, 1, 2)")
    swapped = td.diff(write(tmp_path / "c.h5", [("forward", "conv", b_val.transpose(0, 3, 2, 1))], dims=dims),
                      tmp_path / "b.h5").first_divergence.forward
    assert swapped.hint.endswith("values match after permuting axes (0, 3, 2, 1)")


def test_different_sizes(tmp_path):
    g = rng(3)
    dims = {"batch": 3, "features": 7, "hidden": 11}
    report = td.diff(write(tmp_path / "a.h5", [("forward", "fc", g.standard_normal((3, 7)))], dims=dims),
                     write(tmp_path / "b.h5", [("forward", "fc", g.standard_normal((3, 11)))], dims=dims))
    pair = report.first_divergence.forward
    assert pair.status == "shape_mismatch"
    assert pair.hint == "a is [batch, features], b is [batch, hidden]: different sizes (axis 1: features=7 vs hidden=11)"
    assert pair.stats["max_abs"] is None


def test_parameter_layout_io_against_oi(tmp_path):
    g = rng(4)
    w = g.standard_normal((11, 7))
    x = g.standard_normal((3, 7))
    a = write(tmp_path / "a.h5", [("forward", "dense0", x @ w.T, {"op_type": "Dense"}),
                                  ("param", "dense0/kernel", w.T, {"layout": "IO"})])
    b = write(tmp_path / "b.h5", [("forward", "fc1", x @ w.T, {"op_type": "Linear"}),
                                  ("param", "fc1.weight", w, {"layout": "OI", "role": "weight"})])
    report = td.diff(a, b)
    assert report.ok
    param = next(p for p in report.pairs if p.kind == "param")
    assert (param.a_name, param.b_name, param.status) == ("dense0/kernel", "fc1.weight", "layout")


def channels_last_port(tmp_path, *, reorder_kernel=True, swap_hw=False):
    """A Keras-style port (NHWC, flatten of NHWC, Dense kernel IO with rows in H, W, C order)
    against a torch-style reference (NCHW, flatten of NCHW, Linear weight OI)."""
    g = rng(5)
    x = g.standard_normal((3, 2, 5, 7))
    conv = g.standard_normal((3, 11, 5, 7))
    w = g.standard_normal((13, 385))                       # torch Linear weight [out, C*H*W]
    act = np.maximum(conv, 0)
    ref = [("input", "x", x), ("forward", "conv", conv, {"layout": "NCHW"}),
           ("forward", "act", act), ("forward", "flat", act.reshape(3, -1)),
           ("forward", "fc", act.reshape(3, -1) @ w.T),
           ("param", "fc.weight", w, {"layout": "OI", "role": "weight"})]
    nhwc = act.transpose(0, 2, 3, 1)
    if swap_hw:
        nhwc = nhwc.transpose(0, 2, 1, 3).reshape(3, 5, 7, 11)   # a real bug: H and W mixed up
    kernel = w.reshape(13, 11, 5, 7).transpose(2, 3, 1, 0).reshape(385, 13)   # rows in H, W, C order
    if not reorder_kernel:
        kernel = w.T
    flat = nhwc.reshape(3, -1)
    port = [("input", "x", x.transpose(0, 2, 3, 1)), ("forward", "conv", conv.transpose(0, 2, 3, 1), {"layout": "NHWC"}),
            ("forward", "act", nhwc), ("forward", "flat", flat), ("forward", "fc", flat @ kernel),
            ("param", "fc.weight", kernel, {"layout": "IO", "role": "weight"})]
    dims = {"batch": 3, "in_channels": 2, "height": 5, "width": 7, "channels": 11, "out": 13}
    return td.diff(write(tmp_path / "a.h5", port, dims=dims), write(tmp_path / "b.h5", ref, dims=dims))


def test_declared_layout_is_followed_through_activations_flatten_and_kernel(tmp_path):
    report = channels_last_port(tmp_path)
    assert report.ok and report.first_divergence.forward is None
    status = {(p.kind, p.b_name): (p.status, p.diverged) for p in report.pairs}
    assert status == {("input", "x"): ("layout", False), ("forward", "conv"): ("layout", False),
                      ("forward", "act"): ("layout", False), ("forward", "flat"): ("layout", False),
                      ("forward", "fc"): ("ok", False), ("param", "fc.weight"): ("layout", False)}
    flat = next(p for p in report.pairs if p.b_name == "flat")
    assert flat.hint.endswith("(as the declared layouts of forward conv: not a divergence)")


def test_kernel_rows_not_reordered_diverge_at_the_dense(tmp_path):
    report = channels_last_port(tmp_path, reorder_kernel=False)
    fwd = report.first_divergence.forward
    assert (fwd.b_name, fwd.status) == ("fc", "diverged")
    # the kernel alone looks right: a faithful transpose of the weight (declared IO vs OI)
    kernel = next(p for p in report.pairs if p.kind == "param")
    assert (kernel.status, kernel.diverged) == ("layout", False)


def test_a_permutation_other_than_the_declared_one_still_diverges(tmp_path):
    report = channels_last_port(tmp_path, swap_hw=True)
    fwd = report.first_divergence.forward
    assert fwd.b_name == "act" and fwd.diverged


def test_declared_kernel_layouts_do_not_excuse_a_transposed_activation(tmp_path):
    g = rng(6)
    x, w = g.standard_normal((3, 7)), g.standard_normal((11, 7))
    h = x @ w.T
    ref = [("forward", "fc", h), ("param", "fc.weight", w, {"layout": "OI", "role": "weight"})]
    port = [("forward", "fc", h.T), ("param", "fc.weight", w.T, {"layout": "IO", "role": "weight"})]
    report = td.diff(write(tmp_path / "a.h5", port), write(tmp_path / "b.h5", ref))
    fwd = report.first_divergence.forward
    assert (fwd.b_name, fwd.status, fwd.diverged) == ("fc", "layout", True)
    assert next(p for p in report.pairs if p.kind == "param").diverged is False
