"""Health checks on healthy real architectures (Hugging Face models built from configs, Keras
applications with weights=None), one training step at batch 8: no fail and no warn. The
architecture-aware rules (zero-init gates, layer scale, normalisation after a convolution,
residual branches, squeeze-excite) must not hide real bugs: a zeroed stem BatchNorm with no
residual around it, and Hugging Face's EfficientNet initialisation (BatchNorm weights drawn from
N(0, 0.02), meant for loading pretrained weights), still fail."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tracediff as td  # noqa: E402
import checks_real as real  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def alarms(report):
    return {c.id: (c.status, c.message) for c in report.checks if c.status in ("warn", "fail")}


def record(tmp_path, case, steps=1, name="t.h5"):
    model, inputs, loss_fn, classes = case() if callable(case) else case
    path = real.torch_step(model, inputs, loss_fn, tmp_path / name, steps=steps)
    return td.check(path, classes=classes)


@pytest.mark.parametrize("name", list(real.TORCH_CASES))
def test_healthy_real_architecture_one_training_step_raises_no_alarm(tmp_path, name):
    report = record(tmp_path, real.TORCH_CASES[name])
    assert alarms(report) == {}
    ran = {c.id for c in report.checks if c.status == "pass"}
    assert {"nonfinite", "initial_loss", "activation_spread", "gradient_flow", "grad_weight_ratio",
            "frozen_params", "loss_input"} <= ran


def test_zero_init_residual_gates_are_named_and_judged_from_step_one(tmp_path):
    one = record(tmp_path, real.resnet18, name="one.h5")
    frozen = one["frozen_params"]
    assert frozen.status == "pass"
    assert ("cannot judge at step 0 (zero-initialised gate "
            "`resnet.encoder.stages.0.layers.0.layer.1.normalization.weight`") in frozen.message
    gated = frozen.details["gated"]
    assert gated["resnet.encoder.stages.0.layers.0.layer.0.convolution.weight"] == \
        "resnet.encoder.stages.0.layers.0.layer.1.normalization.weight"
    assert len(gated) == 32   # 8 blocks x (conv, bn weight, bn bias, conv) behind the gate
    spread = one["activation_spread"].details["rescaled"]
    assert spread["resnet.encoder.stages.0.layers.0.layer.1.normalization"] == (
        "branch of `resnet.encoder.stages.0.layers.0` (std "
        f"{td.checks.activations.fmt(one['activation_spread'].details['std']['resnet.encoder.stages.0.layers.0'])})")
    two = record(tmp_path, real.resnet18, steps=2, name="two.h5")   # the gates have moved
    assert alarms(two) == {}
    assert "cannot judge" not in two["frozen_params"].message
    assert two["frozen_params"].details["gated"] == {}
    assert "24 weight(s) behind a zero-initialised gate not judged" in two["update_ratio"].message


def test_zeroed_stem_batchnorm_without_residual_still_fails(tmp_path):
    model, x, loss_fn, classes = real.resnet18()
    with torch.no_grad():
        model.resnet.embedder.embedder.normalization.weight.zero_()   # the bug
    report = record(tmp_path, (model, x, loss_fn, classes))
    spread = report["activation_spread"]
    assert (spread.status, spread.layers[0]) == ("fail", "resnet.embedder.embedder.normalization")
    assert spread.message.startswith("activations collapse from `resnet.embedder.embedder.normalization`")
    assert report["frozen_params"].status == "fail"
    assert "cannot judge" not in report["frozen_params"].message   # a stem is no gate
    assert report["dead_units"].status == "fail"


def test_hugging_face_efficientnet_init_for_pretrained_weights_collapses(tmp_path):
    report = record(tmp_path, lambda: real.efficientnet(init=False))
    spread = report["activation_spread"]
    assert (spread.status, spread.layers[0]) == ("fail", "efficientnet.embeddings.batchnorm")
    flow = report["gradient_flow"]
    assert flow.status == "fail" and flow.value < 1e-30
    assert flow.message.startswith("vanishing gradients")


def test_squeeze_excite_relu_sees_too_few_values_per_unit_to_call_it_dead(tmp_path):
    dead = record(tmp_path, lambda: real.efficientnet("relu"))["dead_units"]
    assert dead.status == "pass"
    assert "judged as a whole only: no more dead units than chance allows" in dead.message


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_healthy_keras_application_training_step_raises_no_alarm(tmp_path, name):
    pytest.importorskip("keras")
    path = real.keras_step(name, tmp_path / "k.h5")
    report = td.check(path, classes=10)
    assert alarms(report) == {}
    assert report["train_mode"].message.startswith("training trace (trace meta training=True)")
    if name == "mobilenet_v2":   # depthwise outputs a BatchNorm rescales right after
        rescaled = report["activation_spread"].details["rescaled"]
        assert rescaled["block_15_depthwise"] == "normalised by `block_15_depthwise_BN`"
    else:                        # Keras runs the shortcut conv between conv and BatchNorm
        exempt = report["grad_weight_ratio"].details["exempt"]
        assert exempt["conv1_conv/kernel"] == "normalised by `conv1_bn`"
        # its BatchNorm comes after the shortcut's conv and BN: found by its values
        assert exempt["conv2_block1_3_conv/kernel"] == "normalised by `conv2_block1_3_bn`"


def test_a_zero_init_gate_frozen_by_mistake_fails_from_step_one(tmp_path):
    model, x, loss_fn, classes = real.resnet18()
    gate = model.resnet.encoder.stages[0].layers[0].layer[1].normalization.weight
    gate.requires_grad_(False)   # the bug: the gate can never open, its block never trains
    report = record(tmp_path, (model, x, loss_fn, classes), steps=2)
    frozen = report["frozen_params"]
    assert frozen.status == "fail"
    block = "resnet.encoder.stages.0.layers.0.layer"
    assert set(frozen.layers[:4]) == {f"{block}.{i}.{p}" for i, p in (
        (0, "convolution.weight"), (0, "normalization.weight"), (0, "normalization.bias"),
        (1, "convolution.weight"))}
    assert frozen.layers[4:] == [f"{block}.1.normalization.weight"]   # frozen while its bias trains
    assert "cannot judge" not in frozen.message
    assert (f"`{block}.1.normalization.weight` marked requires_grad=False while the bias of the "
            "same layer trains") in frozen.message


def test_a_pre_norm_transformer_whose_stream_is_too_small_for_its_layernorm_fails(tmp_path):
    model, inputs, loss_fn, classes = real.gpt2()
    with torch.no_grad():   # the bug: embeddings 1000x too small, LayerNorm's epsilon swamps them
        model.transformer.wte.weight.mul_(1e-3)
        model.transformer.wpe.weight.mul_(1e-3)
    spread = record(tmp_path, (model, inputs, loss_fn, classes))["activation_spread"]
    assert (spread.status, spread.layers[0]) == ("fail", "transformer.h.0.ln_1")
    assert "transformer.h.0.attn.c_proj" in spread.layers   # std 5e-5: not excused as a branch


@pytest.mark.parametrize("name", ["resnet18", "gpt2"])
def test_statistics_only_training_traces_are_quiet_too(tmp_path, name):
    # recording()'s default: no tensor values, structure read from statistics alone
    model, inputs, loss_fn, classes = real.TORCH_CASES[name]()
    path = real.torch_step(model, inputs, loss_fn, tmp_path / "s.h5", values=False)
    report = td.check(path, classes=classes)
    assert alarms(report) == {}
    assert report["loss_input"].status == "skip"   # it reads the logits' values
