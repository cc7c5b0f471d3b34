"""Issue 22 §1: an evaluation set recorded batch by batch (``batch_index``); the diff aligns
batch by batch and names, per layer, the worst batch and the worst row within it."""
import json

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402


class Pool(nn.Module):
    """Mean over the real (unpadded) tokens; ``masked=False`` is the port's bug: the mean over
    every position, padding included."""

    def __init__(self, masked=True):
        super().__init__()
        self.masked = masked

    def forward(self, h, mask):
        if not self.masked:
            return h.mean(dim=1)
        weights = mask.unsqueeze(-1).to(h.dtype)
        return (h * weights).sum(dim=1) / weights.sum(dim=1)


class Classifier(nn.Module):
    def __init__(self, masked=True):
        super().__init__()
        self.embed = nn.Embedding(23, 13)
        self.proj = nn.Linear(13, 13)
        self.pool = Pool(masked)
        self.head = nn.Linear(13, 3)

    def forward(self, ids, mask):
        return self.head(self.pool(torch.tanh(self.proj(self.embed(ids))), mask))


def _batches():
    """Three batches of 4 sequences of 7 tokens; the padding is heaviest in batch 2, row 1."""
    data = torch.Generator().manual_seed(3)
    out = []
    for b in range(3):
        ids = torch.randint(1, 23, (4, 7), generator=data)
        mask = torch.ones(4, 7, dtype=torch.long)
        if b == 1:
            mask[3, 5:] = 0
        if b == 2:
            mask[1, 2:] = 0
            mask[0, 6:] = 0
        out.append({"ids": ids * mask, "mask": mask})
    return out


def _record(path, masked):
    torch.manual_seed(0)
    model = Classifier(masked).eval()
    with torch.no_grad():
        return tdt.record(model, _batches(), path, batches=True)


def test_each_batch_is_recorded_with_its_index(tmp_path, torch_one_thread):
    outputs = _record(tmp_path / "ref.h5", masked=True)
    trace = td.open(tmp_path / "ref.h5")
    assert len(outputs) == 3 and trace.batches == [0, 1, 2]
    assert [r.call for r in trace.records(kind="forward", name="pool")] == [0, 0, 0]
    # parameters once, with the first batch
    assert [r.batch_index for r in trace.records(kind="param", name="head.weight")] == [0]
    assert td.diff(tmp_path / "ref.h5", tmp_path / "ref.h5").ok


def test_the_worst_batch_and_row_are_named_per_layer(tmp_path, torch_one_thread):
    _record(tmp_path / "ref.h5", masked=True)
    _record(tmp_path / "cand.h5", masked=False)
    report = td.diff(tmp_path / "cand.h5", tmp_path / "ref.h5")
    data = json.loads(report.to_json())
    first = data["first_divergence"]
    assert (first["batch_index"], first["forward"]["b_name"]) == (1, "pool")
    layers = {(x["kind"], x["b_name"]): x for x in data["steps"]["layers"]}
    pool = layers[("forward", "pool")]
    assert (pool["worst"]["batch_index"], pool["worst"]["row"]) == (2, 1)
    assert pool["diverged"] == [1, 2]           # batch 0 has no padding: the bug is silent there
    assert layers[("forward", "proj")]["diverged"] == [] and layers[("forward", "proj")]["worst"]["max_abs"] == 0
    assert [c["batch_index"] for c in data["steps"]["columns"]] == [0, 1, 2]


def test_batches_must_be_an_iterable_of_inputs(tmp_path):
    model = nn.Linear(3, 2)
    with pytest.raises(td.TraceDiffError, match=r"record\(batches=True\) takes an iterable of batches"):
        tdt.record(model, torch.ones(2, 3), tmp_path / "t.h5", batches=True)


def test_an_onnx_export_recorded_batch_by_batch_names_the_batch_and_layer(tmp_path, torch_one_thread):
    """The same evaluation set through an ONNX export of the port (onnxruntime, batches=True):
    a clean export matches the torch batches; the unmasked pooling is named at batch 1."""
    pytest.importorskip("onnxruntime")
    import warnings

    import onnx

    from tracediff.adapters import onnx as tdo

    _record(tmp_path / "ref.h5", masked=True)
    batches = _batches()
    for name, masked in (("clean", True), ("bug", False)):
        torch.manual_seed(0)
        model = Classifier(masked).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (batches[0]["ids"], batches[0]["mask"]), tmp_path / f"{name}.onnx",
                              input_names=["ids", "mask"], dynamo=False)
        taken = [i.name for i in onnx.load(tmp_path / f"{name}.onnx").graph.input]  # the bug drops mask
        tdo.record(tmp_path / f"{name}.onnx", [{k: b[k].numpy() for k in taken} for b in batches],
                   tmp_path / f"{name}.h5", batches=True)
    trace = td.open(tmp_path / "bug.h5")
    assert trace.batches == [0, 1, 2]
    assert {r.batch_index for r in trace.records(kind="param")} == {0}
    assert td.diff(tmp_path / "clean.h5", tmp_path / "ref.h5").ok
    first = td.diff(tmp_path / "bug.h5", tmp_path / "ref.h5").to_dict()["first_divergence"]
    assert first["batch_index"] == 1 and first["forward"]["b_name"] == "pool"
    with pytest.raises(td.TraceDiffError, match=r"record\(batches=True\) takes a list of input dicts"):
        tdo.record(tmp_path / "bug.onnx", batches[0], tmp_path / "x.h5", batches=True)
