"""A torch CNN, its torch trace and torch.export program, and an ONNX export of it with a planted
bug in its second conv (``3``, the ONNX node ``/3/Conv``): the Model Explorer tests' models
(the ONNX replay tests use the CNN too)."""
from __future__ import annotations

import copy
import warnings


def cnn():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()


def planted(folder, export=True):
    """``{"ref": torch trace, "pt2": exported program file, "onnx": planted-bug export, "bad":
    its trace, "program": the ExportedProgram}`` under ``folder`` (no torch.export program
    without ``export``)."""
    import torch

    from tracediff.adapters import onnx as tdo
    from tracediff.adapters import torch as tdt

    model = cnn()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[3].weight.mul_(1.05)
    paths = {name: folder / name for name in ("ref.h5", "model.pt2", "bad.onnx", "bad.h5")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bad, (x,), paths["bad.onnx"], dynamo=False)
    program = None
    if export:
        program = torch.export.export(model, (x,))
        torch.export.save(program, paths["model.pt2"])
    tdt.record(model, x, paths["ref.h5"], loss_fn=lambda out: out.sum())
    tdo.record(paths["bad.onnx"], {"input.1": x.numpy()}, paths["bad.h5"], loss="sum")
    return {"ref": paths["ref.h5"], "pt2": paths["model.pt2"], "onnx": paths["bad.onnx"],
            "bad": paths["bad.h5"], "program": program}
