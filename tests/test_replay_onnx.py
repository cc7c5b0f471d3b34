"""Layer replay of ONNX candidates: every node run on a torch reference's values in one
onnxruntime session cut at its edges."""
import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402


def cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()


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
