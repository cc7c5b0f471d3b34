"""Alignment: exact names, rename rules, ONNX module paths, structure when names differ;
backward and parameter records follow their forward pairs; unmatched records are listed."""
import numpy as np
import pytest

import tracediff as td

from diff_helpers import rng, write


def mlp_records(names, ops, params, *, bias_bug=False, extra=None, seed=0, kernel_io=False):
    """A two-layer MLP's forward, backward, params and param grads under the given names."""
    g = rng(seed)
    x = g.standard_normal((3, 7))
    w1, b1 = g.standard_normal((11, 7)), g.standard_normal(11)
    w2, b2 = g.standard_normal((5, 11)), g.standard_normal(5)
    h = x @ w1.T + b1
    r = np.maximum(h, 0)
    o = r @ w2.T + (0 if bias_bug else b2)
    do = (o - 1.0) / o.size
    dr = do @ w2
    dh = dr * (h > 0)
    fc1, act, fc2 = names
    recs = [("input", "x", x), ("forward", fc1, h, {"op_type": ops[0]}), ("forward", act, r, {"op_type": ops[1]})]
    if extra:
        recs.append(("forward", extra, r, {"op_type": "Dropout"}))
    recs += [("forward", fc2, o, {"op_type": ops[2]}), ("loss", "loss", np.float64(((o - 1) ** 2).mean() / 2)),
             ("backward", fc2, do), ("backward", act, dr), ("backward", fc1, dh)]
    for (pname, value, grad, role) in ((params[0], w1, dh.T @ x, "weight"), (params[1], b1, dh.sum(0), "bias"),
                                       (params[2], w2, do.T @ r, "weight"), (params[3], b2, do.sum(0), "bias")):
        meta = {"role": role}
        if role == "weight":
            meta["layout"] = "IO" if kernel_io else "OI"
            if kernel_io:
                value, grad = value.T, grad.T
        recs.append(("param", pname, value, meta))
        recs.append(("param_grad", pname, grad, meta))
    return recs


TORCH = dict(names=("fc1", "act", "fc2"), ops=("Linear", "ReLU", "Linear"),
             params=("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
KERAS = dict(names=("dense", "re_lu", "dense_1"), ops=("Dense", "ReLU", "Dense"),
             params=("dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"), kernel_io=True)


def test_structural_alignment_names_the_bug_without_matching_names(tmp_path):
    a = write(tmp_path / "a.h5", mlp_records(**KERAS, bias_bug=True))
    b = write(tmp_path / "b.h5", mlp_records(**TORCH))
    report = td.diff(a, b)
    fwd = report.first_divergence.forward
    assert (fwd.a_name, fwd.b_name, fwd.match) == ("dense_1", "fc2", "structure")
    assert fwd.confidence >= 0.9
    assert fwd.hint.startswith("missing or wrong bias")
    back = report.first_divergence.backward
    assert (back.a_name, back.b_name, back.match) == ("dense_1", "fc2", "structure")
    params = {(p.a_name, p.b_name, p.kind) for p in report.pairs if p.kind in ("param", "param_grad")}
    assert ("dense_1/kernel", "fc2.weight", "param") in params
    assert ("dense/bias", "fc1.bias", "param_grad") in params
    assert report.unmatched == {"a": [], "b": []}


def test_correct_port_with_other_names_reports_nothing(tmp_path):
    a = write(tmp_path / "a.h5", mlp_records(**KERAS))
    b = write(tmp_path / "b.h5", mlp_records(**TORCH))
    report = td.diff(a, b)
    assert report.ok
    assert report.first_divergence.forward is None and report.first_divergence.backward is None
    kernel = next(p for p in report.pairs if p.a_name == "dense/kernel" and p.kind == "param")
    assert (kernel.b_name, kernel.status) == ("fc1.weight", "layout")
    assert len(report.pairs) == len(mlp_records(**TORCH))


def test_extra_record_is_listed_unmatched(tmp_path):
    a = write(tmp_path / "a.h5", mlp_records(**KERAS, extra="dropout"))
    b = write(tmp_path / "b.h5", mlp_records(**TORCH))
    report = td.diff(a, b)
    assert report.ok
    assert report.unmatched == {"a": ["dropout"], "b": []}
    assert report.unmatched_records["a"][0]["kind"] == "forward"


def test_rename_rules_from_toml(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[rename.a]\n"^dense_1" = "fc2"\n"^dense(?=$|/)" = "fc1"\n"^re_lu$" = "act"\n'
                     '"/kernel$" = ".weight"\n"/bias$" = ".bias"\n')
    a = write(tmp_path / "a.h5", mlp_records(**KERAS, bias_bug=True))
    b = write(tmp_path / "b.h5", mlp_records(**TORCH))
    report = td.diff(a, b, rename=rules)
    fwd = report.first_divergence.forward
    assert (fwd.a_name, fwd.b_name, fwd.match) == ("dense_1", "fc2", "rule")
    assert all(p.match == "rule" for p in report.pairs if p.kind in ("forward", "backward"))


def test_explicit_pair_rule(tmp_path):
    recs_a = [("forward", "first", rng(1).standard_normal((3, 7))), ("forward", "second", rng(2).standard_normal((3, 7)))]
    recs_b = [("forward", "one", rng(1).standard_normal((3, 7))), ("forward", "two", rng(3).standard_normal((3, 7)))]
    report = td.diff(write(tmp_path / "a.h5", recs_a), write(tmp_path / "b.h5", recs_b),
                     rename={"pair": [{"a": "second", "b": "two"}, {"a": "first", "b": "one"}]})
    assert [(p.a_name, p.b_name, p.match) for p in report.pairs] == [("first", "one", "rule"), ("second", "two", "rule")]
    assert report.first_divergence.forward.b_name == "two"


def test_bad_rules_file_is_one_clear_line(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[rename.a]\n"(" = "x"\n')
    a = write(tmp_path / "a.h5", mlp_records(**TORCH))
    with pytest.raises(td.TraceDiffError, match=r"rules.toml: \[rename.a\] '\(' is not a valid regular expression"):
        td.diff(a, a, rename=rules)


def test_onnx_records_pair_by_module_path(tmp_path):
    g = rng(5)
    x = g.standard_normal((3, 7))
    h = g.standard_normal((3, 11))
    r = np.maximum(h, 0)
    mm = g.standard_normal((3, 5))
    o = mm + 1.0
    onnx = [("forward", "/fc1/Gemm", h, {"module": "fc1", "op_type": "Gemm"}),
            ("forward", "/act/Relu", r, {"module": "act", "op_type": "Relu"}),
            ("forward", "/fc2/MatMul", mm, {"module": "fc2", "op_type": "MatMul"}),
            ("forward", "/fc2/Add", o + 0.5, {"module": "fc2", "op_type": "Add"}),
            ("forward", "/Softmax", o, {"module": "", "op_type": "Softmax", "graph_output": True})]
    torch_recs = [("forward", "fc1", h, {"op_type": "Linear"}), ("forward", "act", r, {"op_type": "ReLU"}),
                  ("forward", "fc2", o, {"op_type": "Linear"}), ("forward", "<root>", o, {"op_type": "MLP"})]
    report = td.diff(write(tmp_path / "a.h5", onnx, framework="onnx"),
                     write(tmp_path / "b.h5", torch_recs, framework="torch"))
    pairs = [(p.a_name, p.b_name, p.match) for p in report.pairs]
    assert pairs == [("/fc1/Gemm", "fc1", "module"), ("/act/Relu", "act", "module"),
                     ("/fc2/Add", "fc2", "module"), ("/Softmax", "<root>", "module")]
    assert report.first_divergence.forward.b_name == "fc2"
    assert report.first_divergence.forward.hint == "a = b + 0.5: a constant offset (a wrong bias or shift added everywhere)"
    assert report.unmatched == {"a": ["/fc2/MatMul"], "b": []}


def test_align_name_refuses_when_nothing_pairs(tmp_path):
    a = write(tmp_path / "a.h5", mlp_records(**KERAS))
    b = write(tmp_path / "b.h5", mlp_records(**TORCH))
    with pytest.raises(td.TraceDiffError, match="no forward record of .*a.h5 could be aligned with .*b.h5: "
                                                r"give rename rules \(--rename RULES\) or pair records by position"):
        td.diff(a, b, align="name")


def test_align_order_pairs_by_position(tmp_path):
    a = write(tmp_path / "a.h5", mlp_records(**KERAS, bias_bug=True))
    b = write(tmp_path / "b.h5", mlp_records(**TORCH))
    report = td.diff(a, b, align="order")
    fwd = report.first_divergence.forward
    assert (fwd.a_name, fwd.b_name, fwd.match) == ("dense_1", "fc2", "order")


def test_repeated_calls_pair_by_call_index(tmp_path):
    g = rng(6)
    first, second = g.standard_normal((3, 7)), g.standard_normal((3, 7))
    a = write(tmp_path / "a.h5", [("forward", "block", first), ("forward", "block", second * 2)])
    b = write(tmp_path / "b.h5", [("forward", "block", first), ("forward", "block", second)])
    report = td.diff(a, b)
    fwd = report.first_divergence.forward
    assert (fwd.b_name, fwd.a_call, fwd.b_call) == ("block", 1, 1)


@pytest.mark.parametrize("dp_limit", [1500, 8], ids=["banded-dp", "greedy-walk"])
def test_structure_recovers_from_missing_records(tmp_path, monkeypatch, dp_limit):
    from tracediff.compare import structure

    monkeypatch.setattr(structure, "DP_LIMIT", dp_limit)
    g = rng(8)
    ops = ["Linear", "ReLU", "LayerNorm", "GELU", "Softmax"]
    values = [g.standard_normal((3, 7 + i % 5)) * (1 + i % 7) for i in range(40)]
    b = write(tmp_path / "b.h5", [("forward", f"layers.{i}", v, {"op_type": ops[i % 5]})
                                  for i, v in enumerate(values)])
    a = write(tmp_path / "a.h5", [("forward", f"blk{i}", v, {"op_type": ops[i % 5]})
                                  for i, v in enumerate(values) if i not in (5, 20, 21)])
    report = td.diff(a, b)
    assert report.ok
    assert all(p.a_name == f"blk{p.b_name.split('.')[1]}" and p.match == "structure" for p in report.pairs)
    assert report.unmatched == {"a": [], "b": ["layers.5", "layers.20", "layers.21"]}


def test_torch_records_carrying_their_own_module_path_still_pair_with_onnx(tmp_path):
    g = rng(7)
    h, o = g.standard_normal((3, 11)), g.standard_normal((3, 5))
    onnx = [("forward", "/fc1/Gemm", h, {"module": "fc1", "scope": "fc1"}),
            ("forward", "/attn/o/Gemm", o, {"module": "attn.o", "scope": "attn.o"}),
            ("forward", "/Softmax", o, {"module": "<root>", "scope": "<root>"})]
    torch_recs = [("forward", "fc1", h, {"module": "fc1"}), ("forward", "attn.o", o, {"module": "attn.o"}),
                  ("forward", "attn", o, {"module": "attn"}), ("forward", "<root>", o, {"module": ""})]
    report = td.diff(write(tmp_path / "a.h5", torch_recs, framework="torch"),
                     write(tmp_path / "b.h5", onnx, framework="onnx"))
    assert [(p.a_name, p.b_name, p.match) for p in report.pairs] == [
        ("fc1", "/fc1/Gemm", "module"), ("attn.o", "/attn/o/Gemm", "module"), ("attn", "/attn/o/Gemm", "module"),
        ("<root>", "/Softmax", "module")]
    assert report.ok
