"""The torch side of the onnx2torch test, run in a subprocess: onnx2torch imports torchvision
(for its NMS and RoIAlign converters only), which does not work here; a placeholder package that
raises if called stands in for it, so it must not reach the test process.

usage: onnx2torch_side.py MODEL.onnx INPUT.npy OUT_DIR FRACTION...
Writes OUT_DIR/training.h5 (the converted model as onnx2torch returns it: in training mode),
OUT_DIR/clean.h5 (in eval mode) and, per FRACTION, OUT_DIR/perturbed_<FRACTION>.h5 with the weight of the
conv/linear layer at that fraction of the depth scaled by (1 + 0.01 N(0, 1)), and prints one JSON
line ``{fraction: layer name}``.
"""
import json
import os
import sys
import tempfile


def _placeholder_torchvision():
    root = tempfile.mkdtemp()
    ops = os.path.join(root, "torchvision", "ops")
    os.makedirs(ops)
    open(os.path.join(root, "torchvision", "__init__.py"), "w").close()
    with open(os.path.join(ops, "__init__.py"), "w") as f:
        f.write("def _absent(*args, **kwargs):\n"
                "    raise NotImplementedError('torchvision is not installed')\n"
                "nms = box_convert = roi_align = _absent\n")
    sys.path.insert(0, root)


def main(model_path, input_path, out_dir, *fractions):
    _placeholder_torchvision()
    import numpy as np
    import onnx2torch
    import torch

    from tracediff.adapters import torch as tdt

    x = torch.from_numpy(np.load(input_path))
    model = onnx2torch.convert(model_path)
    assert model.training                   # converted modules start in training mode
    tdt.record(model, x, os.path.join(out_dir, "training.h5"))
    # converted afresh: a forward in training mode has updated BatchNorm's running statistics
    model = onnx2torch.convert(model_path).eval()
    tdt.record(model, x, os.path.join(out_dir, "clean.h5"))
    layers = [name for name, m in model.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    rng = np.random.default_rng(1)
    planted = {}
    for fraction in fractions:
        name = layers[int(float(fraction) * len(layers))]
        weight = model.get_submodule(name).weight
        saved = weight.detach().clone()
        noise = torch.from_numpy(rng.standard_normal(tuple(weight.shape)).astype(np.float32))
        with torch.no_grad():
            weight.mul_(1 + 0.01 * noise)
        tdt.record(model, x, os.path.join(out_dir, f"perturbed_{fraction}.h5"))
        with torch.no_grad():
            weight.copy_(saved)
        planted[fraction] = name
    print(json.dumps(planted))


if __name__ == "__main__":
    main(*sys.argv[1:])
