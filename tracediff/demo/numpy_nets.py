"""From-scratch NumPy float64 nets (an MLP, a CNN with pooling, a pre-LayerNorm transformer
block) with hand-written backward passes, recording themselves through ``td.Recorder``.

A net is built from a state dict in torch's names and layouts (``init_params`` makes one, or a
torch reference's ``state_dict`` converted to float64), a set of planted bug ids (``bugs.py``)
and a naming: ``"torch"`` uses the reference's module names (``fc1``, ``act1``), ``"port"``
renames every record the way a hand port might (``dense0``, ``relu0``, ``dense0.W``), so that
only structural alignment can pair them.
"""
from __future__ import annotations

import math

import numpy as np

from ..recorder import Recorder
from . import bugs as bug_catalogue
from . import numpy_layers as L

DIMS = {
    "mlp": {"batch": 3, "features": 7, "hidden": 11, "hidden2": 13, "classes": 5},
    "cnn": {"batch": 3, "channels": 2, "height": 14, "width": 22, "filters": 13,
            "filters2": 17, "pooled_h": 7, "pooled_w": 11, "classes": 5},
    "transformer": {"batch": 3, "seq": 5, "features": 7, "d_model": 11, "ff": 17, "classes": 13},
}

# Reference (torch) record name -> the name a hand port might give it.
PORT_NAMES = {
    "mlp": {"fc1": "dense0", "act1": "relu0", "fc2": "dense1", "act2": "relu1", "fc3": "dense2"},
    "cnn": {"conv1": "conv_a", "act1": "relu_a", "pool1": "maxpool_a", "conv2": "conv_b",
            "act2": "relu_b", "flatten": "reshape", "fc": "logits"},
    "transformer": {
        "embed": "proj_in", "ln1": "norm_attn", "attn.q": "mha.query", "attn.k": "mha.key",
        "attn.v": "mha.value", "attn.scores": "mha.logits", "attn.probs": "mha.weights",
        "attn.ctx": "mha.mix", "attn.o": "mha.out", "attn": "mha", "res1": "skip_attn",
        "ln2": "norm_ffn", "fc1": "ffn.up", "act": "ffn.gelu", "fc2": "ffn.down",
        "res2": "skip_ffn", "head": "proj_out"},
}
PORT_PARAM_NAMES = {"weight": "W", "bias": "b"}
# ...and its own words for the ops (the engine knows these families: Dense is Linear).
PORT_OP_TYPES = {"Linear": "Dense", "Conv2d": "Conv2D", "MaxPool2d": "MaxPooling2D",
                 "Flatten": "Reshape", "LayerNorm": "LayerNormalization", "ReLU": "relu",
                 "GELU": "gelu", "Tanh": "tanh", "Softmax": "softmax", "Add": "add"}


def _uniform(rng, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _linear(rng, params, name, n_in, n_out):
    params[f"{name}.weight"] = _uniform(rng, (n_out, n_in), n_in)
    params[f"{name}.bias"] = _uniform(rng, (n_out,), n_in)


def _conv(rng, params, name, c_in, c_out, k=3):
    params[f"{name}.weight"] = _uniform(rng, (c_out, c_in, k, k), c_in * k * k)
    params[f"{name}.bias"] = _uniform(rng, (c_out,), c_in * k * k)


def _layernorm(rng, params, name, n):
    params[f"{name}.weight"] = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    params[f"{name}.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)


def init_params(net: str, seed: int = 0) -> dict:
    """float32 parameters in torch's names, layouts and ``named_parameters`` order."""
    rng = np.random.default_rng(seed)
    d = DIMS[_check_net(net)]
    p = {}
    if net == "mlp":
        _linear(rng, p, "fc1", d["features"], d["hidden"])
        _linear(rng, p, "fc2", d["hidden"], d["hidden2"])
        _linear(rng, p, "fc3", d["hidden2"], d["classes"])
    elif net == "cnn":
        _conv(rng, p, "conv1", d["channels"], d["filters"])
        _conv(rng, p, "conv2", d["filters"], d["filters2"])
        _linear(rng, p, "fc", d["filters2"] * d["pooled_h"] * d["pooled_w"], d["classes"])
    else:
        _linear(rng, p, "embed", d["features"], d["d_model"])
        _layernorm(rng, p, "ln1", d["d_model"])
        for proj in ("q", "k", "v", "o"):
            _linear(rng, p, f"attn.{proj}", d["d_model"], d["d_model"])
        _layernorm(rng, p, "ln2", d["d_model"])
        _linear(rng, p, "fc1", d["d_model"], d["ff"])
        _linear(rng, p, "fc2", d["ff"], d["d_model"])
        _linear(rng, p, "head", d["d_model"], d["classes"])
    return p


def make_inputs(net: str, seed: int = 0):
    """(x float32, integer targets) for one batch of ``net``."""
    rng = np.random.default_rng(seed + 1000)
    d = DIMS[_check_net(net)]
    if net == "mlp":
        shape, targets = (d["batch"], d["features"]), (d["batch"],)
    elif net == "cnn":
        shape, targets = (d["batch"], d["channels"], d["height"], d["width"]), (d["batch"],)
    else:
        shape, targets = (d["batch"], d["seq"], d["features"]), (d["batch"], d["seq"])
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, d["classes"], size=targets).astype(np.int64)
    return x, y


def _check_net(net):
    if net not in DIMS:
        from ..errors import TraceDiffError
        raise TraceDiffError(f"unknown demo net {net!r}: choose one of {', '.join(DIMS)}")
    return net


class NumpyNet:
    """Shared recording logic; subclasses build their layers and run forward/backward."""

    net = ""

    def __init__(self, state: dict, bugs=(), naming: str = "torch"):
        if naming not in ("torch", "port"):
            from ..errors import TraceDiffError
            raise TraceDiffError(f"unknown naming {naming!r}: use 'torch' or 'port'")
        self.bugs = bug_catalogue.check(self.net, bugs)
        self.naming = naming
        self.state = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
        self.layers = self._build()

    # -- construction helpers -------------------------------------------------------------
    def _param(self, name):
        return self.state[name]

    def _linear(self, name, **flags):
        return L.Linear(self._param(f"{name}.weight"), self._param(f"{name}.bias"), **flags)

    # -- running ------------------------------------------------------------------------------
    def _apply(self, name, *inputs):
        out = self.layers[name].forward(*inputs)
        self._outputs.append((name, out))
        return out

    def forward(self, x):
        """Logits; the per-layer outputs are kept in ``self.outputs`` in execution order."""
        self._outputs = []
        logits = self._forward(np.asarray(x, dtype=np.float64))
        self.outputs = list(self._outputs)
        return logits

    def loss_and_grads(self, x, y):
        """(loss, {layer: dL/d output}) with parameter gradients left in each layer's ``grads``."""
        logits = self.forward(x)
        rows = logits.reshape(-1, logits.shape[-1])
        loss, dlogits = L.cross_entropy(rows, np.asarray(y).reshape(-1))
        grads = self._backward(dlogits.reshape(logits.shape))
        return loss, grads

    def param_grads(self) -> dict:
        """{torch parameter name: gradient} after ``loss_and_grads``."""
        out = {}
        for name in self.state:
            layer, attr = name.rsplit(".", 1)
            out[name] = self.layers[layer].grads[attr]
        return out

    # -- recording ----------------------------------------------------------------------------
    def record_name(self, name: str) -> str:
        return PORT_NAMES[self.net][name] if self.naming == "port" else name

    def record_param_name(self, name: str) -> str:
        if self.naming == "torch":
            return name
        layer, attr = name.rsplit(".", 1)
        return f"{PORT_NAMES[self.net][layer]}.{PORT_PARAM_NAMES[attr]}"

    def record_op_type(self, name: str) -> str:
        op_type = self.layers[name].op_type
        return PORT_OP_TYPES.get(op_type, op_type) if self.naming == "port" else op_type

    def _as_recorded(self, name, value):
        return value

    def record(self, rec: Recorder, x, y) -> float:
        """Record input, forward per layer, loss, backward per layer (loss towards input) and
        every parameter with its gradient."""
        rec.input("input", np.asarray(x, dtype=np.float64))
        loss, grads = self.loss_and_grads(x, y)
        for name, out in self.outputs:
            rec.forward(self.record_name(name), self._as_recorded(name, out),
                        op_type=self.record_op_type(name))
        rec.loss(np.float64(loss))
        for name, _ in reversed(self.outputs):
            rec.backward(self.record_name(name), self._as_recorded(name, grads[name]),
                         op_type=self.record_op_type(name))
        param_grads = self.param_grads()
        for name, value in self.state.items():
            rec.param(self.record_param_name(name), value, grad=param_grads[name],
                      role=name.rsplit(".", 1)[1], layout={2: "OI", 4: "OIHW"}.get(value.ndim))
        return float(loss)

    def record_to(self, path, x, y, *, model="", overwrite=True) -> float:
        """Record one forward and backward pass of this net into a new trace at ``path``."""
        with Recorder(path, framework="numpy", dims=DIMS[self.net], model=model or self.net,
                      framework_version=np.__version__, overwrite=overwrite,
                      meta={"bugs": sorted(self.bugs), "naming": self.naming},
                      flush_every=64) as rec:
            return self.record(rec, x, y)


class SequentialNet(NumpyNet):
    """A chain of single-input layers; the backward walks it in reverse."""

    def _forward(self, x):
        for name in self.layers:
            x = self._apply(name, x)
        return x

    def _backward(self, dlogits):
        names = list(self.layers)
        grads = {names[-1]: dlogits}
        d = dlogits
        for i in range(len(names) - 1, 0, -1):
            d = self.layers[names[i]].backward(d)
            grads[names[i - 1]] = d
        self.layers[names[0]].backward(d)
        return grads


class MLP(SequentialNet):
    """fc1 -> act1 (ReLU) -> fc2 -> act2 (ReLU) -> fc3."""

    net = "mlp"

    def _build(self):
        b = self.bugs
        fc1_grad_bug = "transposed" if "weight_grad_transposed" in b else None
        fc2_grad_bug = "double_mean" if "weight_grad_double_mean" in b else None
        return {
            "fc1": self._linear("fc1", weight_grad_bug=fc1_grad_bug),
            "act1": L.ReLU(derivative_bug="wrong_activation_derivative" in b),
            "fc2": self._linear("fc2", use_bias="missing_bias" not in b, weight_grad_bug=fc2_grad_bug),
            "act2": L.Tanh() if "wrong_activation" in b else L.ReLU(),
            "fc3": self._linear("fc3"),
        }

    def _as_recorded(self, name, value):
        # the shape bug: this port keeps its hidden layer feature-major
        if "transposed_output" in self.bugs and name in ("fc1", "act1"):
            return np.ascontiguousarray(value.T)
        return value


class CNN(SequentialNet):
    """conv1 -> act1 -> pool1 -> conv2 -> act2 -> flatten -> fc (3x3 kernels, padding 1)."""

    net = "cnn"

    def _build(self):
        b = self.bugs
        p = self._param
        conv2_pads = (1, 1, 2, 0) if "wrong_padding" in b else (1, 1, 1, 1)
        return {
            "conv1": L.Conv2d(p("conv1.weight"), p("conv1.bias"), (1, 1, 1, 1),
                              flip_kernel="flipped_kernel" in b),
            "act1": L.ReLU(),
            "pool1": L.MaxPool2d(average_grad_bug="pool_gradient_spread" in b),
            "conv2": L.Conv2d(p("conv2.weight"), p("conv2.bias"), conv2_pads,
                              flip_weight_grad="flipped_weight_grad" in b),
            "act2": L.ReLU(),
            "flatten": L.Flatten(channels_last_bug="wrong_flatten_order" in b),
            "fc": self._linear("fc"),
        }


class Transformer(NumpyNet):
    """embed -> pre-LN single-head attention block with residual -> pre-LN GELU feed-forward
    with residual -> head; a classification per position."""

    net = "transformer"

    def _build(self):
        b = self.bugs
        p = self._param
        scale = 1.0 if "missing_attention_scaling" in b else 1.0 / math.sqrt(DIMS["transformer"]["d_model"])
        ln2_eps = 1e-3 if "layernorm_eps" in b else 1e-5
        return {
            "embed": self._linear("embed"),
            "ln1": L.LayerNorm(p("ln1.weight"), p("ln1.bias")),
            "attn.q": self._linear("attn.q"),
            "attn.k": self._linear("attn.k"),
            "attn.v": self._linear("attn.v"),
            "attn.scores": L.Scores(scale),
            "attn.probs": L.Softmax(),
            "attn.ctx": L.Mix(),
            "attn.o": self._linear("attn.o", weight_grad_bug="transposed"
                                   if "square_weight_grad_transposed" in b else None),
            "attn": _Identity("Attention"),
            "res1": L.Add(),
            "ln2": L.LayerNorm(p("ln2.weight"), p("ln2.bias"), eps=ln2_eps),
            "fc1": self._linear("fc1"),
            "act": L.GELU(approximate_tanh="gelu_tanh" in b),
            "fc2": self._linear("fc2"),
            "res2": L.Add(skip_term_bug="skipped_residual_gradient" in b),
            "head": self._linear("head"),
        }

    def _forward(self, x):
        a = self._apply
        e = a("embed", x)
        h = a("ln1", e)
        q, k, v = a("attn.q", h), a("attn.k", h), a("attn.v", h)
        probs = a("attn.probs", a("attn.scores", q, k))
        o = a("attn.o", a("attn.ctx", probs, v))
        r1 = a("res1", e, a("attn", o))
        r2 = a("res2", r1, a("fc2", a("act", a("fc1", a("ln2", r1)))))
        return a("head", r2)

    def _backward(self, dlogits):
        lay = self.layers
        g = {"head": dlogits}
        g["res2"] = lay["head"].backward(dlogits)
        d_r1_skip, g["fc2"] = lay["res2"].backward(g["res2"])
        g["act"] = lay["fc2"].backward(g["fc2"])
        g["fc1"] = lay["act"].backward(g["act"])
        g["ln2"] = lay["fc1"].backward(g["fc1"])
        g["res1"] = d_r1_skip + lay["ln2"].backward(g["ln2"])
        d_e_skip, g["attn"] = lay["res1"].backward(g["res1"])
        g["attn.o"] = lay["attn"].backward(g["attn"])
        g["attn.ctx"] = lay["attn.o"].backward(g["attn.o"])
        g["attn.probs"], g["attn.v"] = lay["attn.ctx"].backward(g["attn.ctx"])
        g["attn.scores"] = lay["attn.probs"].backward(g["attn.probs"])
        g["attn.q"], g["attn.k"] = lay["attn.scores"].backward(g["attn.scores"])
        g["ln1"] = sum(lay[f"attn.{p}"].backward(g[f"attn.{p}"]) for p in ("q", "k", "v"))
        g["embed"] = d_e_skip + lay["ln1"].backward(g["ln1"])
        lay["embed"].backward(g["embed"])
        return g


class _Identity(L.Layer):
    """A container's output: the attention module returns its output projection unchanged."""

    def __init__(self, op_type):
        super().__init__()
        self.op_type = op_type

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


NETS = {"mlp": MLP, "cnn": CNN, "transformer": Transformer}


def build(net: str, state: dict, bugs=(), naming: str = "torch") -> NumpyNet:
    return NETS[_check_net(net)](state, bugs=bugs, naming=naming)
