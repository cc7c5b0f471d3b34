"""Issue 19, item 9: modules that are ``Identity`` in a ViT's configuration (timm's
``patch_embed.norm`` after ``flatten(2).transpose(1, 2)``, ``attn.k_norm`` after a head split)
pass a tensor the export computes with a transpose just before: they pair with the node of the
same shape, not with the node before the transpose (a false ``layout`` and exit 1 on a clean
export), and stay unmatched where the export optimised their tensor away."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(3, 8, 2, stride=2), nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Keys(nn.Module):
    def __init__(self):
        super().__init__()
        self.k, self.k_norm = nn.Linear(8, 8), nn.Identity()

    def forward(self, x):
        b, n, _ = x.shape
        k = self.k_norm(self.k(x).reshape(b, n, 2, 4).transpose(1, 2))
        return k.transpose(1, 2).reshape(b, n, 8)


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed, self.attn, self.head = PatchEmbed(), Keys(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(self.patch_embed(x)))


def test_identity_modules_pair_with_the_tensor_they_pass(tmp_path):
    torch.manual_seed(0)
    net, x = TinyViT().eval(), torch.randn(2, 3, 6, 6)
    target = np.random.default_rng(0).integers(0, 3, (2, 9))
    labels = torch.tensor(target).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), tmp_path / "vit.onnx", dynamo=False, opset_version=18,
                          input_names=["x"], output_names=["y"])
    tdt.record(net, x, tmp_path / "torch.h5", loss_fn=lambda out: F.cross_entropy(out.reshape(-1, 3), labels))
    tdo.record(str(tmp_path / "vit.onnx"), {"x": x.numpy()}, tmp_path / "onnx.h5",
               loss="cross_entropy", target=target)
    report = td.diff(tmp_path / "torch.h5", tmp_path / "onnx.h5")
    assert report.ok, [(p.kind, p.a_name, p.b_name, p.status) for p in report.pairs if p.diverged]
    assert not any(p.status == "layout" for p in report.pairs if p.kind in ("forward", "backward"))
    pairs = {(p.kind, p.a_name): p for p in report.pairs}
    for kind in ("forward", "backward"):
        norm = pairs[(kind, "patch_embed.norm")]
        assert (norm.b_name, norm.status) == ("/patch_embed/Transpose", "ok")
    # the exporter cancelled the two transposes around attn.k_norm: its tensor exists in no
    # node, so it stays unmatched (listed) rather than pair with the reshape after it
    assert ("forward", "attn.k_norm") not in pairs
    assert report.unmatched["a"].count("attn.k_norm") == 2
