"""Layer replay of ONNX candidates: every node run on a torch reference's values in one
onnxruntime session cut at its edges."""
import copy
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

from explorer_models import cnn  # noqa: E402  (the CNN the Model Explorer tests draw)




def export(model, x, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx-replay")
    model, x = cnn(), torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    tdt.record(model, x, folder / "ref.h5")
    return model, x, folder


def test_an_exact_export_has_no_root_cause(reference):
    model, x, folder = reference
    report = td.replay(export(model, x, folder / "model.onnx"), folder / "ref.h5")
    assert report.ok and report.root_causes == []
    assert report.replay_summary() == {"replayed": 8, "skipped": 0, "skipped_why": {}}


def test_a_perturbed_conv_in_the_export_is_the_only_root_cause(reference):
    model, x, folder = reference
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[3].weight.mul_(1.02)
    report = td.replay(export(bad, x, folder / "bad.onnx"), folder / "ref.h5")
    assert [(c["a_name"], c["b_name"]) for c in report.root_causes] == [("/3/Conv", "3")]
    downstream = [p for p in report.pairs if p.kind == "forward" and p.diverged
                  and p.b_name != "3"]
    assert downstream and all(p.local["status"] == "ok" for p in downstream)


def test_the_cli_replays_an_onnx_file(reference, capsys):
    from tracediff.cli import main
    model, x, folder = reference
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[7].bias.add_(0.3)
    path = export(bad, x, folder / "bad_head.onnx")
    assert main(["replay", str(path), str(folder / "ref.h5"), "--quiet"]) == 1
    assert main(["replay", str(folder / "missing.onnx"), str(folder / "ref.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tracediff replay: error: model {folder / 'missing.onnx'} does not exist: "
                   "give the path of a .onnx file")


LABELS = np.array([1, 4])


@pytest.fixture(scope="module")
def trained_reference(tmp_path_factory):
    """The CNN's trace with its gradients (cross-entropy on LABELS)."""
    folder = tmp_path_factory.mktemp("onnx-replay-backward")
    model, x = cnn(), torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    tdt.record(model, x, folder / "ref.h5",
               loss_fn=lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(LABELS)))
    return model, x, folder


def test_an_exact_export_replays_backward_clean(trained_reference):
    """Recorded with the ONNX adapter's loss, each node's VJP (the adapter's gradient rules) runs
    on the reference's dL/d(output) and inputs: parameter gradients and dL/d(input) all ok."""
    model, x, folder = trained_reference
    report = td.replay(export(model, x, folder / "model.onnx"), folder / "ref.h5",
                       loss_fn="cross_entropy", target=LABELS)
    assert report.ok and report.root_causes == []
    local = {(p.kind, p.b_name): p.local["status"] for p in report.pairs
             if p.kind in ("backward", "param_grad") and p.local is not None}
    # the first conv's weights are folded with the BatchNorm's: no gradient of a torch parameter
    assert local == {**{("param_grad", n): "ok" for n in ("3.weight", "3.bias", "7.weight",
                                                          "7.bias")},
                     **{("backward", n): "ok" for n in ("1", "2", "3", "4", "5", "6")}}


def test_a_forward_bug_in_the_export_is_not_named_again_by_its_backward(trained_reference):
    model, x, folder = trained_reference
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[3].weight.mul_(1.02)
    report = td.replay(export(bad, x, folder / "bad.onnx"), folder / "ref.h5",
                       loss_fn="cross_entropy", target=LABELS)
    assert [(c["kind"], c["a_name"]) for c in report.root_causes] == [("forward", "/3/Conv")]
    below = next(p for p in report.pairs if p.kind == "backward" and p.b_name == "2")
    assert below.local["status"] == "diverged" and below.local["by"] == "/3/Conv"


def test_the_cli_replays_an_onnx_file_backward_with_a_named_loss(trained_reference, capsys):
    from tracediff.cli import main
    model, x, folder = trained_reference
    path = export(model, x, folder / "named.onnx")
    np.save(folder / "labels.npy", LABELS)
    out = folder / "named.json"
    assert main(["replay", str(path), str(folder / "ref.h5"), "--loss", "cross_entropy",
                 "--target", str(folder / "labels.npy"), "--json", str(out), "--quiet"]) == 0
    pairs = json.loads(out.read_text())["pairs"]
    assert {p["b_name"]: p["local"]["status"] for p in pairs if p["kind"] == "param_grad"} == {
        "3.weight": "ok", "3.bias": "ok", "7.weight": "ok", "7.bias": "ok"}
    assert main(["replay", str(path), str(folder / "ref.h5"), "--loss", "hinge"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tracediff replay: error: replay: an ONNX candidate's loss is named, not 'hinge': "
        "'cross_entropy', 'mse' or 'sum' (the ONNX adapter's losses), with its target "
        "(loss_fn=NAME, target=ARRAY; --loss NAME --target FILE.npy)")


def test_a_residual_fan_out_in_an_export_is_judged_by_the_sum_of_its_consumers(tmp_path):
    """The block input feeds two Gemms and the Add of ``+ x``: its dL/d is the sum of the three
    nodes' VJPs (no false root cause), LayerNorm and GELU replayed through the adapter's rules."""
    from test_replay_backward import Residual
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), Residual(), torch.nn.LayerNorm(6),
                              torch.nn.GELU(), torch.nn.Linear(6, 3)).eval()
    x, labels = torch.randn(3, 5, generator=torch.Generator().manual_seed(3)), np.array([0, 1, 2])
    tdt.record(net, x, tmp_path / "ref.h5",
               loss_fn=lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(labels)))
    report = td.replay(export(net, x, tmp_path / "residual.onnx"), tmp_path / "ref.h5",
                       loss_fn="cross_entropy", target=labels)
    assert report.ok and report.root_causes == []
    fan_out = next(p for p in report.pairs if p.kind == "backward" and p.b_name == "0")
    assert fan_out.local["status"] == "ok"
    assert fan_out.local["by"] == ["/1/fc1/Gemm", "/1/proj/Gemm", "/1/Add_1"]
    assert all(p.local["status"] == "ok" for p in report.pairs if p.kind == "param_grad")
