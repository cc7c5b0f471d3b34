"""The default tolerance rule, verified by experiment: float64 computations of an MLP, a CNN with
pooling and a pre-LayerNorm transformer block match their float32 references at every forward,
backward, parameter and parameter-gradient record, while small real bugs are still named."""
import pytest

torch = pytest.importorskip("torch")

import tracediff as td  # noqa: E402

from diff_nets import make, record  # noqa: E402


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    paths = {}
    for net in ("mlp", "cnn", "transformer"):
        model, x, y = make(net, seed=1)
        paths[net] = (folder / f"{net}32.h5", x, y)
        record(model, x, y, paths[net][0], torch.float32)
    return paths


def port(tmp_path, reference, net, *, options=None, **bug):
    ref, x, y = reference[net]
    model, _, _ = make(net, seed=1, **bug)
    path = tmp_path / f"{net}64-{'-'.join(map(str, bug.values()))}.h5"
    if not path.exists():
        record(model, x, y, path, torch.float64)
    return td.diff(path, ref, **(options or {}))


@pytest.mark.parametrize("net", ["mlp", "cnn", "transformer"])
def test_correct_float64_port_matches_float32_reference_everywhere(tmp_path, reference, net):
    report = port(tmp_path, reference, net)
    kinds = {p.kind for p in report.pairs}
    assert kinds == {"input", "forward", "loss", "backward", "param", "param_grad"}
    assert [p for p in report.pairs if p.status != "ok"] == []
    assert report.ok and report.unmatched == {"a": [], "b": []}
    # judged at float32, not float64
    assert all(p.tolerance["atol"] == 1e-5 for p in report.pairs)


def test_layernorm_epsilon_is_named(tmp_path, reference):
    report = port(tmp_path, reference, "transformer", eps=1e-3)
    fwd = report.first_divergence.forward
    assert fwd.b_name == "ln2" and fwd.status == "diverged"
    assert fwd.introduced["verdict"] == "introduced here"


def test_tanh_gelu_is_named(tmp_path, reference):
    report = port(tmp_path, reference, "transformer", gelu="tanh")
    fwd = report.first_divergence.forward
    assert fwd.b_name == "act"
    assert fwd.hint == ("wrong activation: a applies gelu (tanh approximation) to the layer's input "
                        "where the reference applies gelu")


def test_missing_attention_scaling_is_named(tmp_path, reference):
    report = port(tmp_path, reference, "transformer", scale=False)
    fwd = report.first_divergence.forward
    assert fwd.b_name == "attn.scores"
    assert fwd.hint.startswith("a = 4.12311 x b: a constant scale factor")   # sqrt(17)


def test_error_margin_of_the_rule(tmp_path, reference):
    """Rounding error stays well inside the default tolerance (under a quarter of it) and the
    bugs above exceed it by far (over ten times), so the rule has room on both sides."""
    default = {p.b_index: p.tolerance["rtol"] for p in port(tmp_path, reference, "transformer").pairs}
    # min_rtol with atol=0: the relative tolerance each record needs on its own
    exact = port(tmp_path, reference, "transformer", options={"rtol": 0.0, "atol": 0.0})
    used = max(p.stats["min_rtol"] / default[p.b_index] for p in exact.pairs if p.kind == "forward")
    assert 0 < used < 0.25
    bug = port(tmp_path, reference, "transformer", eps=1e-3, options={"rtol": 0.0, "atol": 0.0})
    ln2 = next(p for p in bug.pairs if p.kind == "forward" and p.b_name == "ln2")
    assert ln2.stats["min_rtol"] / default[ln2.b_index] > 10
