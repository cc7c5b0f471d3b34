"""Flax Linen in training mode: apply's ``rngs`` (Dropout) and ``mutable`` (BatchNorm batch
statistics) through record and replay, against the torch equivalent in train() mode. Torch
cannot draw JAX's dropout mask, so its equivalent multiplies by the mask the Flax run drew
(read from the Flax trace): everything else, BatchNorm on the batch's statistics, the running
statistics after the step, gradients, is the two frameworks' own."""
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import jax as tdj  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.errors import TraceDiffError  # noqa: E402

N, W, H, K = 6, 7, 5, 3
RATE = 0.5
LABELS = np.array([0, 2, 1, 1, 0, 2])
KEY = jax.random.key(4)


class Act(nn.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class Net(nn.Module):
    """Linear, BatchNorm, Dropout, ReLU, Linear; ``train`` given at call time, as Flax code does."""
    bn_trains: bool = True

    @nn.compact
    def __call__(self, x, train=True):
        h = nn.Dense(H, name="fc1")(x)
        h = nn.BatchNorm(momentum=0.9, epsilon=1e-5, name="bn")(
            h, use_running_average=not (train and self.bn_trains))
        h = nn.Dropout(RATE, name="drop")(h, deterministic=not train)
        return nn.Dense(K, name="fc2")(Act(name="act")(h))


class MaskedDropout(torch.nn.Module):
    """Training-mode dropout with a given mask (JAX's): x * mask / (1 - p)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(mask.astype(np.float32)))

    def forward(self, x):
        return x * self.mask / (1 - RATE)


def jax_loss(output):
    log_probs = jax.nn.log_softmax(output, axis=-1)
    return -jnp.take_along_axis(log_probs, jnp.asarray(LABELS)[:, None], axis=-1).mean()


def torch_loss(output):
    return torch.nn.functional.cross_entropy(output, torch.from_numpy(LABELS))


def variables():
    """Net's variables, as ``init`` lays them out (made directly: an eager init costs seconds)."""
    rng = np.random.default_rng(5)

    def array(*shape, low=-0.5, high=0.5):
        return jnp.asarray(rng.uniform(low, high, shape).astype(np.float32))
    return {"params": {"fc1": {"kernel": array(W, H), "bias": array(H)},
                       "bn": {"scale": array(H, low=0.5, high=1.5), "bias": array(H)},
                       "fc2": {"kernel": array(H, K), "bias": array(K)}},
            "batch_stats": {"bn": {"mean": array(H), "var": array(H, low=0.5, high=1.5)}}}


def torch_equivalent(variables, mask):
    params, stats = variables["params"], variables["batch_stats"]
    model = torch.nn.Sequential(OrderedDict(
        fc1=torch.nn.Linear(W, H), bn=torch.nn.BatchNorm1d(H, eps=1e-5, momentum=0.1),
        drop=MaskedDropout(mask), act=torch.nn.ReLU(), fc2=torch.nn.Linear(H, K)))
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            kernel = np.array(params[name]["kernel"]).T
            getattr(model, name).weight.copy_(torch.from_numpy(kernel))
            getattr(model, name).bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"])))
        model.bn.weight.copy_(torch.from_numpy(np.asarray(params["bn"]["scale"])))
        model.bn.bias.copy_(torch.from_numpy(np.asarray(params["bn"]["bias"])))
        model.bn.running_mean.copy_(torch.from_numpy(np.asarray(stats["bn"]["mean"])))
        model.bn.running_var.copy_(torch.from_numpy(np.asarray(stats["bn"]["var"])))
    return model.train()


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    x = np.random.default_rng(0).standard_normal((N, W)).astype(np.float32)
    v = variables()
    out = tdj.record(Net(), x, folder / "flax.h5", params=v, rngs={"dropout": KEY},
                     mutable=["batch_stats"], loss_fn=jax_loss)
    with td.open(folder / "flax.h5") as trace:
        mask = trace.get("drop").read() != 0
    tdt.record(torch_equivalent(v, mask), torch.from_numpy(x), folder / "torch.h5",
               loss_fn=torch_loss)
    return folder, x, v, np.asarray(out), mask


def test_training_mode_records_dropout_and_updated_batch_statistics(traces):
    folder, x, v, out, mask = traces
    # the recorded output is the plain apply's with the same rngs
    plain, updates = Net().apply(v, x, rngs={"dropout": KEY}, mutable=["batch_stats"])
    np.testing.assert_array_equal(out, np.asarray(plain))
    assert 0 < mask.mean() < 1                           # dropout dropped, with JAX's mask
    with td.open(folder / "flax.h5") as trace:
        meta = {r.name: r.meta for r in trace if r.kind == "forward"}
        assert meta["bn"]["training"] is True and meta["drop"]["training"] is True
        mean = trace.get("bn.mean", kind="param").read()
    # batch statistics as the step left them, not as they were given
    np.testing.assert_allclose(mean, np.asarray(updates["batch_stats"]["bn"]["mean"]))
    assert not np.allclose(mean, np.asarray(v["batch_stats"]["bn"]["mean"]))


def test_the_training_port_diffs_clean_against_torch_but_the_running_variance(traces):
    folder, *_ = traces
    report = td.diff(folder / "flax.h5", folder / "torch.h5")
    diverged = [(p.kind, p.a_name) for p in report.pairs if p.diverged]
    # Flax updates the running variance with the batch's biased variance, torch with the
    # unbiased one: a real difference between the two, after one training step
    assert diverged == [("param", "bn.var")]
    pairs = {(p.kind, p.a_name): p for p in report.pairs}
    assert pairs[("param", "bn.mean")].b_name == "bn.running_mean"
    assert {pairs[("forward", n)].status for n in ("fc1", "bn", "drop", "act", "fc2")} == {"ok"}
    assert {pairs[("backward", n)].status for n in ("fc1", "bn", "drop")} == {"ok"}
    assert pairs[("param_grad", "bn.scale")].status == "ok"


def test_replay_of_a_bound_training_module_reuses_its_rngs(traces):
    """A bound module carries rngs and mutable: replay draws the recorded dropout mask again, so
    a correct port has no root cause, and a BatchNorm left on its running statistics is one."""
    folder, x, v, *_ = traces
    port = Net().bind(v, rngs={"dropout": KEY}, mutable=["batch_stats"])
    assert td.replay(port, folder / "torch.h5", inputs=x).root_causes == []
    bad = Net(bn_trains=False).bind(v, rngs={"dropout": KEY}, mutable=["batch_stats"])
    report = td.replay(bad, folder / "torch.h5", inputs=x)
    assert [c["a_name"] for c in report.root_causes] == ["bn"]
    assert any(f["kind"] == "training" and f["a_name"] == "bn" for f in report.findings)


def test_rngs_and_mutable_are_linen_options_only():
    with pytest.raises(TraceDiffError, match="rngs= and mutable= are Linen apply's options"):
        tdj.record(lambda p, x: x, np.ones(3), "unused.h5", params={}, rngs={"dropout": KEY})
