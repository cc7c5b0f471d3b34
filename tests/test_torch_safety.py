"""Recording never changes the model: bitwise-identical results, no hook left behind (also when
the model raises), forward only without a loss or autograd, compiled models, clear refusals."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.errors import IncompleteTraceWarning, TraceDiffError  # noqa: E402


class Net(nn.Module):
    """BatchNorm (buffers updated in forward), Dropout (consumes the RNG), an in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(5 * 5 * 5, 11)

    def forward(self, x):
        return self.fc(self.drop(self.act(self.bn(self.conv(x)))).flatten(1))


def run(record_to=None, **options):
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(3, 3, 7, 7, requires_grad=True)
    y = torch.randint(0, 11, (3,))

    def loss_fn(out):
        return F.cross_entropy(out, y)

    if record_to is None:
        out = model(x)
        loss_fn(out).backward()
    else:
        out = tdt.record(model, x, record_to, loss_fn=loss_fn, **options)
    state = {"out": out.detach(), "x.grad": x.grad, "rng": torch.rand(3)}
    state.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
    state.update(model.state_dict())
    return model, state


def bits(t):
    return t.detach().contiguous().view(-1).view(torch.uint8)


@pytest.mark.parametrize("options", [{}, {"level": "op"}, {"values": False}, {"background": True}])
def test_outputs_gradients_parameters_bitwise_identical(tmp_path, options):
    _, plain = run()
    _, recorded = run(tmp_path / "t.h5", **options)
    assert plain.keys() == recorded.keys()
    for key in plain:
        assert torch.equal(bits(plain[key]), bits(recorded[key])), key


def _hooks_left(model):
    left = []
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            left.append(name)
    for name, p in model.named_parameters():
        if p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None):
            left.append(name)
    return left


def _function_modes():
    return len(torch.overrides._get_current_function_mode_stack())


@pytest.mark.parametrize("level", ["module", "op"])
def test_hooks_and_mode_removed_when_the_model_raises(tmp_path, level):
    class Boom(nn.Module):
        def forward(self, x):
            raise ValueError("boom in layer 2")

    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), Boom())
    path = tmp_path / "t.h5"
    with pytest.raises(ValueError, match="boom in layer 2"):
        tdt.record(model, torch.randn(3, 5), path, loss_fn=lambda o: o.sum(), level=level)
    assert _hooks_left(model) == []
    assert _function_modes() == 0
    # the records written before the failure are readable; the trace says it is incomplete
    with pytest.warns(IncompleteTraceWarning):
        trace = td.open(path)
    assert trace.complete is False
    assert [r.name for r in trace.records("forward") if "/" not in r.name] == ["0", "1"]
    # the model still works unrecorded
    model[2] = nn.Identity()
    model(torch.randn(3, 5))


def test_tensor_hooks_removed_when_loss_fn_raises(tmp_path):
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
    outputs = []
    model[0].register_forward_hook(lambda m, a, out: outputs.append(out))

    def bad_loss(out):
        raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError, match="loss exploded"):
        tdt.record(model, torch.randn(3, 5), tmp_path / "t.h5", loss_fn=bad_loss)
    assert outputs and not outputs[0]._backward_hooks
    assert _hooks_left(model[1]) == []


def test_hooks_removed_after_a_clean_run(tmp_path):
    model, _ = run(tmp_path / "t.h5", level="op")
    assert _hooks_left(model) == []
    assert _function_modes() == 0


def _kinds(path):
    return sorted({r.kind for r in td.open(path)})


def test_no_loss_fn_records_forward_only(tmp_path):
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
    tdt.record(model, torch.randn(3, 5), tmp_path / "t.h5")
    assert _kinds(tmp_path / "t.h5") == ["forward", "input", "param"]
    assert all(p.grad is None for p in model.parameters())


def test_no_grad_records_forward_and_loss_only(tmp_path):
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
    with torch.no_grad():
        tdt.record(model, torch.randn(3, 5), tmp_path / "t.h5", loss_fn=lambda o: o.sum())
    assert _kinds(tmp_path / "t.h5") == ["forward", "input", "loss", "param"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
def test_compiled_module_is_recorded_through_its_original(tmp_path):
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
    compiled = torch.compile(model)
    x = torch.randn(3, 5)
    out = tdt.record(compiled, x, tmp_path / "t.h5", loss_fn=lambda o: o.sum())
    trace = td.open(tmp_path / "t.h5")
    assert [r.name for r in trace.records("forward")] == ["0", "1", "<root>"]
    assert trace.attrs["model"] == "Sequential"
    assert '"compiled": true' in trace.attrs["meta"]
    assert torch.equal(out, model(x))


def test_root_attributes(tmp_path):
    model = nn.Linear(5, 7)
    tdt.record(model, torch.randn(3, 5), tmp_path / "t.h5", dims={"batch": 3, "features": 5},
               seed=11, model_name="tiny")
    trace = td.open(tmp_path / "t.h5")
    assert trace.framework == "torch"
    assert trace.attrs["framework_version"] == torch.__version__
    assert trace.attrs["model"] == "tiny" and trace.attrs["seed"] == 11
    assert trace.dims == {"batch": 3, "features": 5}


@pytest.mark.parametrize("call,message", [
    (lambda p: tdt.record(nn.Linear(5, 7), torch.randn(3, 5), p, level="layer"),
     "level='layer' is not a capture level: use 'module' or 'op'"),
    (lambda p: tdt.record(nn.Linear(5, 7), torch.randn(3, 5), p, kinds=["forward", "grad"]),
     "unknown record kind(s) 'grad' in kinds=: use a subset of input, forward, backward, param, "
     "param_grad, loss"),
    (lambda p: tdt.record(nn.Linear(5, 7), torch.randn(3, 5), p, loss_fn=lambda o: o),
     "loss_fn returned a tensor of shape [3, 7]: it must be a scalar; reduce it (.mean() or .sum())"),
    (lambda p: tdt.record(lambda x: x, torch.randn(3, 5), p),
     "cannot record function: the torch adapter records torch.nn.Module models; "
     "wrap the computation in an nn.Module"),
    (lambda p: tdt.recording(nn.Linear(5, 7), p, every=0),
     "recording(every=0): every must be a whole number >= 1"),
    (lambda p: tdt.record(nn.Linear(5, 7), torch.randn(3, 5), p, include=3),
     "include= must be a glob string or a list of globs, got 3"),
])
def test_bad_input_is_one_clear_line(tmp_path, call, message):
    with pytest.raises(TraceDiffError) as info:
        call(tmp_path / "t.h5")
    assert str(info.value) == message


def test_existing_trace_is_not_overwritten_unless_asked(tmp_path):
    path = tmp_path / "t.h5"
    tdt.record(nn.Linear(5, 7), torch.randn(3, 5), path)
    with pytest.raises(TraceDiffError, match="already exists"):
        tdt.record(nn.Linear(5, 7), torch.randn(3, 5), path)
    tdt.record(nn.Linear(5, 7), torch.randn(3, 5), path, overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert td.open(path).complete
    np.testing.assert_equal(len(td.open(path).records("param")), 2)


def test_param_grad_is_this_loss_gradient_and_grads_still_accumulate(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(7, 5)
    x, y = torch.randn(3, 7), torch.randint(0, 5, (3,))
    plain = nn.Linear(7, 5)
    plain.load_state_dict(model.state_dict())
    for _ in range(2):
        F.cross_entropy(plain(x), y).backward()
    for i in range(2):
        tdt.record(model, x, tmp_path / f"t{i}.h5", loss_fn=lambda out: F.cross_entropy(out, y))
    first = td.open(tmp_path / "t0.h5").get("weight", kind="param_grad").read()
    second = td.open(tmp_path / "t1.h5").get("weight", kind="param_grad").read()
    assert first.tobytes() == second.tobytes()
    assert torch.equal(model.weight.grad, plain.weight.grad)
    meta = td.open(tmp_path / "t1.h5").get("weight", kind="param").meta
    assert meta["requires_grad"] is True and meta["role"] == "weight"


@pytest.mark.parametrize("values", [True, False])
@pytest.mark.parametrize("level", ["module", "op"])
def test_background_writer_records_what_the_hooks_saw(tmp_path, level, values):
    """The writer thread gets a copy (or, stats-only, the summary) taken in the hook: the
    in-place ReLU that later overwrites the BatchNorm output changes nothing in the trace."""
    run(tmp_path / "inline.h5", level=level, values=values, background=False)
    run(tmp_path / "thread.h5", level=level, values=values, background=True)
    inline, thread = td.open(tmp_path / "inline.h5"), td.open(tmp_path / "thread.h5")
    assert [r.key for r in thread] == [r.key for r in inline]
    assert "bn" in {r.name for r in thread}
    for a, b in zip(inline, thread):
        assert (a.dtype, a.shape, a.stats, a.hash) == (b.dtype, b.shape, b.stats, b.hash)
        if values:
            assert a.read().tobytes() == b.read().tobytes(), a.name
        else:
            assert a.sample()[1].tobytes() == b.sample()[1].tobytes(), a.name
