"""Planted bugs end to end: two torch traces of the same architecture, one with a bug in a known
layer. The diff names that layer first (forward, and backward from the loss); a correct copy
reports nothing."""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402


class Block(nn.Module):
    def __init__(self, buggy=False):
        super().__init__()
        self.buggy = buggy
        self.norm = nn.LayerNorm(14)
        self.up = nn.Linear(14, 28)
        self.act = nn.GELU()
        self.down = nn.Linear(28, 14)

    def forward(self, x):
        h = self.norm(x)
        if self.buggy:
            h = h * 1.01          # the planted bug: a stray scale inside block 1, before "up"
        return x + self.down(self.act(self.up(h)))


class Net(nn.Module):
    def __init__(self, buggy_block=None):
        super().__init__()
        self.embed = nn.Linear(5, 14)
        self.blocks = nn.Sequential(*[Block(buggy=(i == buggy_block)) for i in range(3)])
        self.head = nn.Linear(14, 11)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)))


def trace_of(tmp_path, name, buggy_block=None, level="module"):
    torch.manual_seed(0)
    model = Net(buggy_block)
    x = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(2))
    path = tmp_path / f"{name}.h5"
    tdt.record(model, x, path, loss_fn=lambda out: F.cross_entropy(out.reshape(-1, 11), y.reshape(-1)),
               level=level)
    return path


def test_correct_copy_reports_nothing(tmp_path):
    report = td.diff(trace_of(tmp_path, "a"), trace_of(tmp_path, "b"))
    assert report.ok
    assert report.first_divergence.forward is None and report.first_divergence.backward is None


def test_planted_bug_is_named_at_its_layer(tmp_path):
    report = td.diff(trace_of(tmp_path, "cand", buggy_block=1), trace_of(tmp_path, "ref"))
    assert not report.ok
    first = report.first_divergence.forward
    assert first.b_name == "blocks.1.up" and first.status == "diverged"
    # everything before the bug matches, including the block's own LayerNorm
    statuses = {(p.kind, p.b_name): p.status for p in report.pairs}
    assert statuses[("forward", "blocks.1.norm")] == "ok"
    assert statuses[("forward", "blocks.0")] == "ok"
    # walking back from the loss, the head's gradient already differs (its input changed)
    assert report.first_divergence.backward.b_name == "head"


def test_planted_bug_is_named_at_op_level(tmp_path):
    report = td.diff(trace_of(tmp_path, "cand", buggy_block=1, level="op"),
                     trace_of(tmp_path, "ref", level="op"), align="name")
    assert not report.ok
    # the extra op has no partner; the first shared op that diverges is block 1's "up" linear
    assert "blocks.1/mul#0" in report.unmatched["a"]
    assert report.first_divergence.forward.b_name == "blocks.1.up/linear#0"
