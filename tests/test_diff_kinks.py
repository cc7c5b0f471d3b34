"""Issue 19, kink-aware gradients: a float32 torch MLP against a NumPy port computed in float64
and stored as float32, where one pre-activation sits within rounding of 0 with opposite signs
on the two sides. The ReLU gate flips at that element, so dL/d fc1 differs there by a whole
gradient: the backward is reported ok with the note, and the weight gradient it causes too. A
genuinely wrong ReLU gradient is still named."""
from collections import OrderedDict

import numpy as np
import pytest

import tracediff as td

torch = pytest.importorskip("torch")
from tracediff.adapters import torch as tdt  # noqa: E402

IN, HIDDEN, OUT, N = 7, 11, 5, 3
LABELS = np.array([1, 4, 0])


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(
        fc1=torch.nn.Linear(IN, HIDDEN), act=torch.nn.ReLU(), fc2=torch.nn.Linear(HIDDEN, OUT))).eval()


def place_at_the_kink(model, x):
    """Set one fc1 bias so that one sample's pre-activation is on opposite sides of 0 in float32
    (torch) and float64 (the port), both within rounding of it: (sample, unit, z32, z64)."""
    w = model.fc1.weight.detach().numpy().astype(np.float64)
    for unit in range(HIDDEN):
        original = float(model.fc1.bias[unit].detach())
        for sample in range(N):
            dot = x[sample].astype(np.float64) @ w[unit]
            for bias in _floats_around(np.float32(-dot), 8):
                with torch.no_grad():
                    model.fc1.bias[unit] = float(bias)
                    z32 = float(model.fc1(torch.from_numpy(x))[sample, unit].detach())
                z64 = dot + float(bias)
                if (z32 > 0) != (z64 > 0):
                    return sample, unit, z32, z64
        with torch.no_grad():
            model.fc1.bias[unit] = original
    raise AssertionError("no bias puts a pre-activation on the kink")


def _floats_around(value, count):
    out = [value]
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
        step = value
        for _ in range(count):
            step = np.nextafter(step, direction)
            out.append(step)
    return out


def numpy_port(model, x, path, gate_offset=0.0):
    """Forward and backward by hand in float64, recorded as float32 (``gate_offset`` != 0: a
    wrong ReLU derivative, passing gradient where the input is above -gate_offset)."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in model.named_parameters()}
    x64 = x.astype(np.float64)
    z = x64 @ p["fc1.weight"].T + p["fc1.bias"]
    h = np.maximum(z, 0)
    logits = h @ p["fc2.weight"].T + p["fc2.bias"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    loss = -np.log(prob[np.arange(N), LABELS]).mean()
    dlogits = (prob - np.eye(OUT)[LABELS]) / N
    dh = dlogits @ p["fc2.weight"]
    dz = dh * (z > -gate_offset)
    f32 = np.float32
    with td.Recorder(path, framework="numpy") as rec:
        rec.input("input", x)
        for name, value in (("fc1", z), ("act", h), ("fc2", logits), ("<root>", logits)):
            rec.forward(name, value.astype(f32))
        rec.loss(f32(loss))
        for name, value in (("<root>", dlogits), ("fc2", dlogits), ("act", dh), ("fc1", dz)):
            rec.backward(name, value.astype(f32))
        grads = {"fc1.weight": dz.T @ x64, "fc1.bias": dz.sum(0),
                 "fc2.weight": dlogits.T @ h, "fc2.bias": dlogits.sum(0)}
        for name, grad in grads.items():
            rec.param(name, p[name].astype(f32), grad=grad.astype(f32))
    return path


@pytest.fixture(scope="module")
def torch_trace(tmp_path_factory):
    x = np.random.default_rng(0).standard_normal((N, IN)).astype(np.float32)
    model = mlp()
    site = place_at_the_kink(model, x)
    path = tmp_path_factory.mktemp("kink") / "torch.h5"
    tdt.record(model, torch.from_numpy(x), path,
               loss_fn=lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(LABELS)))
    return model, x, path, site


def test_a_gate_flipped_within_tolerance_of_the_kink_is_ok_with_a_note(torch_trace, tmp_path):
    model, x, torch_path, (sample, unit, z32, z64) = torch_trace
    assert abs(z32) < 1e-6 and (z32 > 0) != (z64 > 0)
    report = td.diff(numpy_port(model, x, tmp_path / "port.h5"), torch_path)
    assert report.ok, [(p.kind, p.b_name, p.status, p.hint) for p in report.pairs if p.diverged]
    pairs = {(p.kind, p.b_name): p for p in report.pairs}
    fc1 = pairs[("backward", "fc1")]
    assert fc1.status == "ok"
    assert fc1.hint.startswith(f"a ReLU-family kink: the gate of act flips at 1 element(s) (first at "
                               f"[{sample}, {unit}])")
    assert fc1.stats["mismatch_fraction"] > 0          # the gradient does differ there
    weight = pairs[("param_grad", "fc1.weight")]
    assert weight.status == "ok" and weight.hint.startswith("inherits the ReLU-family kink at act")
    # without the flip the same port is exact to float32 rounding: nothing else was excused
    assert all(p.hint is None or "kink" not in p.hint for p in report.pairs
               if (p.kind, p.b_name) not in {("backward", "fc1"), ("param_grad", "fc1.weight"),
                                             ("param_grad", "fc1.bias")})


def test_a_genuinely_wrong_relu_gradient_is_still_named(torch_trace, tmp_path):
    model, x, torch_path, _ = torch_trace
    report = td.diff(numpy_port(model, x, tmp_path / "wrong.h5", gate_offset=0.5), torch_path)
    assert not report.ok
    assert report.first_divergence.forward is None
    first = report.first_divergence.backward
    assert (first.b_name, first.status) == ("fc1", "diverged")
    assert "kink" not in (first.hint or "")


def pool_net():
    torch.manual_seed(1)
    return torch.nn.Sequential(OrderedDict(
        stem=torch.nn.Conv2d(2, 3, 1), pool=torch.nn.MaxPool2d(2), flat=torch.nn.Flatten(),
        fc=torch.nn.Linear(3 * 2 * 2, OUT))).eval()


def pool_port(model, x, labels, path, route="last"):
    """The pool net by hand in float64: a tied window maximum sends its gradient to the last
    tied element (torch: the first); ``route="min"`` is a wrong derivative (to the minimum)."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in model.named_parameters()}
    s = np.einsum("oi,nihw->nohw", p["stem.weight"][:, :, 0, 0], x.astype(np.float64)) \
        + p["stem.bias"][None, :, None, None]
    n, c, h, w = s.shape
    blocks = s.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    pooled = blocks.max(-1)
    flat = pooled.reshape(n, -1)
    logits = flat @ p["fc.weight"].T + p["fc.bias"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    dlogits = (prob - np.eye(OUT)[labels]) / n
    dpooled = (dlogits @ p["fc.weight"]).reshape(pooled.shape)
    pick = 3 - np.argmax(blocks[..., ::-1], -1) if route == "last" else np.argmin(blocks, -1)
    dblocks = np.zeros_like(blocks)
    np.put_along_axis(dblocks, pick[..., None], dpooled[..., None], -1)
    ds = dblocks.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(s.shape)
    f32 = np.float32
    with td.Recorder(path, framework="numpy") as rec:
        rec.input("input", x)
        for name, value in (("stem", s), ("pool", pooled), ("flat", flat), ("fc", logits), ("<root>", logits)):
            rec.forward(name, value.astype(f32))
        rec.loss(f32(-np.log(prob[np.arange(n), labels]).mean()))
        for name, value in (("<root>", dlogits), ("fc", dlogits), ("flat", dpooled.reshape(n, -1)),
                            ("pool", dpooled), ("stem", ds)):
            rec.backward(name, value.astype(f32))
    return path


def test_a_max_pool_tie_routed_to_another_element_is_ok_with_a_note(tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 2, 4, 4)).astype(np.float32)
    x[0, :, 0, 1] = x[0, :, 0, 0]                      # two equal pixels: a tied window
    x[0, :, 0, 0] += 10                                 # ... and the window's maximum
    x[0, :, 0, 1] = x[0, :, 0, 0]
    labels = np.array([1, 3])
    model = pool_net()
    with torch.no_grad():
        model.stem.weight.abs_()                        # a positive map keeps the tie the maximum
    torch_path = tmp_path / "torch.h5"
    tdt.record(model, torch.from_numpy(x), torch_path,
               loss_fn=lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(labels)))
    report = td.diff(pool_port(model, x, labels, tmp_path / "port.h5"), torch_path)
    assert report.ok, [(p.kind, p.b_name, p.status, p.hint) for p in report.pairs if p.diverged]
    stem = next(p for p in report.pairs if (p.kind, p.b_name) == ("backward", "stem"))
    assert stem.stats["mismatch_fraction"] > 0
    assert stem.hint.startswith("a max-pool tie: pool has windows whose maximum is tied within tolerance")
    wrong = td.diff(pool_port(model, x, labels, tmp_path / "wrong.h5", route="min"), torch_path)
    assert wrong.first_divergence.backward.b_name == "stem"
