"""The PyTorch references the framework ports are diffed against (Keras in
test_tensorflow_vs_torch.py, Flax in test_jax_vs_torch.py, replay in test_replay_keras.py): an
MLP and a CNN with prime-sized dims, their recorded traces as module fixtures, and the report
helpers those tests share. Import the fixtures by name into the test module."""
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tracediff.adapters import torch as tdt  # noqa: E402

# Distinct prime sizes: every axis of every tensor is identified by its size.
DIMS = {"batch": 3, "in_channels": 2, "height": 5, "width": 7, "channels": 11, "classes": 13}
N, C_IN, H, W, C, K = DIMS.values()
LABELS = np.array([1, 12, 4])


def torch_loss(output):
    return torch.nn.functional.cross_entropy(output, torch.from_numpy(LABELS))


def torch_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(
        fc1=torch.nn.Linear(W, H), act=torch.nn.ReLU(), fc2=torch.nn.Linear(H, K))).eval()


def torch_cnn():
    torch.manual_seed(1)
    model = torch.nn.Sequential(OrderedDict(
        # A 3x5 kernel: with distinct sizes the HWIO <-> OIHW permutation is unique.
        conv=torch.nn.Conv2d(C_IN, C, (3, 5), padding=(1, 2)),
        bn=torch.nn.BatchNorm2d(C),
        act=torch.nn.ReLU(),
        pool=torch.nn.MaxPool2d(3, stride=1, padding=1),
        flat=torch.nn.Flatten(),
        fc=torch.nn.Linear(C * H * W, K)))
    with torch.no_grad():   # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def numpy_of(t):
    return t.detach().numpy()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).standard_normal((N, C_IN, H, W)).astype(np.float32)


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(3).standard_normal((N, W)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn_reference(images, tmp_path_factory):
    model = torch_cnn()
    path = tmp_path_factory.mktemp("torch") / "cnn.h5"
    output = tdt.record(model, torch.from_numpy(images), path, loss_fn=torch_loss, dims=DIMS)
    return model, path, numpy_of(output)


@pytest.fixture(scope="module")
def mlp_reference(features, tmp_path_factory):
    model = torch_mlp()
    path = tmp_path_factory.mktemp("torch") / "mlp.h5"
    output = tdt.record(model, torch.from_numpy(features), path, loss_fn=torch_loss, dims=DIMS)
    return model, path, numpy_of(output)


def diverging(report):
    return [(p.a_name, p.kind, p.status, p.hint) for p in report.pairs if p.diverged]


def values_differ(report, kind="forward"):
    """Pairs whose values differ even after any permutation, in b's execution order."""
    return [p.a_name for p in report.pairs if p.kind == kind and p.status not in ("ok", "layout")]
