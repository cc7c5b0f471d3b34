"""Healthy real architectures, default-initialised and built from configs (no download), for
the health checks: Hugging Face ``transformers`` vision and language models recorded by the torch
adapter over one training step, Keras applications (weights=None) by the Keras adapter.
Shared by tests/test_checks_real.py. Each model is kept small: batch 8, 32-64 px, width 64."""
from __future__ import annotations

import numpy as np

BATCH = 8


def torch_step(model, inputs, loss_fn, path, steps=1, lr=1e-3, values=True):
    """Record ``steps`` Adam steps of ``model`` (in training mode) with the torch adapter."""
    import torch
    from tracediff.adapters import torch as tdt
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    with tdt.recording(model, path, every=1, values=values) as session:
        for _ in range(steps):
            opt.zero_grad()
            out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
            loss = loss_fn(out)
            session.loss(loss)
            loss.backward()
            opt.step()
    return path


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _image_case(model, size, classes=10, seed=0):
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, size, size, generator=g)
    y = torch.randint(0, classes, (BATCH,), generator=g)
    return model, x, (lambda out: F.cross_entropy(_logits(out), y)), classes


def zero_init_residual(model):
    """torchvision's ``zero_init_residual=True``: the last BatchNorm weight of every residual
    block set to 0, so that each block starts as the identity (Goyal et al. 2017)."""
    import torch
    from transformers.models.resnet.modeling_resnet import ResNetBasicLayer, ResNetBottleNeckLayer
    gated = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (ResNetBasicLayer, ResNetBottleNeckLayer)):
                last = module.layer[-1].normalization
                last.weight.zero_()
                gated.append(f"{name}.layer.{len(module.layer) - 1}.normalization")
    return gated


def resnet18():
    from transformers import ResNetConfig, ResNetForImageClassification
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                          layer_type="basic", num_labels=10)
    model = ResNetForImageClassification(config)
    zero_init_residual(model)
    return _image_case(model, 64)


def convnext_atto():
    from transformers import ConvNextConfig, ConvNextForImageClassification
    config = ConvNextConfig(hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2],
                            layer_scale_init_value=1e-6, num_labels=10)
    return _image_case(ConvNextForImageClassification(config), 32)


def vit_tiny():
    from transformers import ViTConfig, ViTForImageClassification
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    return _image_case(ViTForImageClassification(config), 32)


def mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    config = MobileNetV2Config(image_size=64, depth_multiplier=0.35, num_labels=10)
    return _image_case(MobileNetV2ForImageClassification(config), 64)


def reference_init(model):
    """The EfficientNet initialisation as timm applies it (``_init_weight_goog``): BatchNorm
    weight 1 and bias 0, convolutions He-normal (fan out), the classifier
    uniform(+-1/sqrt(fan_in + fan_out)).
    Hugging Face's EfficientNet draws BatchNorm weights from N(0, 0.02) (meant for loading
    pretrained weights): activations collapse through its blocks, see the test that says so."""
    import torch
    from torch import nn
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1 / (m.in_features + m.out_features) ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                m.bias.zero_()
    return model


def efficientnet(act="swish", init=True):
    """EfficientNet-B0's block layout, width 0.25. ``act="relu"`` gives its squeeze-excite
    blocks a ReLU, as MobileNetV3's have (transformers has no MobileNetV3)."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification
    config = EfficientNetConfig(image_size=64, width_coefficient=1.0, depth_coefficient=0.25,
                                hidden_act=act, num_labels=10, hidden_dim=1280)
    model = EfficientNetForImageClassification(config)
    return _image_case(reference_init(model) if init else model, 64)


def gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (BATCH, 16), generator=g)
    return GPT2LMHeadModel(config), {"input_ids": ids, "labels": ids}, (lambda out: out.loss), 128


def bert_mlm():
    import torch
    from transformers import BertConfig, BertForMaskedLM
    config = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (BATCH, 16), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    return BertForMaskedLM(config), {"input_ids": ids, "labels": labels}, (lambda out: out.loss), 128


def bert_classifier():
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForSequenceClassification
    config = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32, num_labels=4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (BATCH, 16), generator=g)
    y = torch.randint(0, 4, (BATCH,), generator=g)
    return BertForSequenceClassification(config), {"input_ids": ids}, \
        (lambda out: F.cross_entropy(out.logits, y)), 4


TORCH_CASES = {"resnet18": resnet18, "convnext_atto": convnext_atto, "vit_tiny": vit_tiny,
               "mobilenet_v2": mobilenet_v2, "efficientnet": efficientnet,
               "efficientnet_relu_se": lambda: efficientnet("relu"),
               "gpt2": gpt2, "bert_mlm": bert_mlm,
               "bert_classifier": bert_classifier}


def keras_step(name, path, size=32):
    """One recorded training step (training=True) of a Keras application with weights=None."""
    import keras
    import tensorflow as tf
    from tracediff.adapters import tensorflow as tdtf
    keras.utils.set_random_seed(0)
    build = {"mobilenet_v2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50}[name]
    model = build(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None,
                  **({"alpha": 0.35} if name == "mobilenet_v2" else {}))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)

    def loss_fn(out):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True))
    tdtf.record(model, x, path, loss_fn=loss_fn, training=True)
    return path
