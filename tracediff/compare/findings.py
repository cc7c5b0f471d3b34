"""Findings a porter needs before any layer: the two runs were fed different inputs (RGB against
BGR, normalised against raw, a transposed image), or the traces show a configuration that differs
(a normalisation's eps or momentum, training against eval mode, tanh against exact GELU, where a
convolution pads). Report field ``findings``, inputs first (docs/diff.md)."""
from __future__ import annotations

import numpy as np

from . import steps
from .families import family
from .hints import explain_inputs

MODE_FAMILIES = ("batchnorm", "dropout")       # layers whose output depends on training mode


def findings(aligned, pairs, ta, tb) -> list:
    """``[{"kind", "a_name", "b_name", "message", "layers"}]``: input findings, then one
    per configuration setting that differs (its first layer, and how many layers)."""
    out = [f for pair in pairs if pair.kind == "input" and pair.diverged
           for f in [_input_finding(pair, ta, tb)] if f]
    forward = [item for item in aligned if item.b.kind == "forward"]
    forward.sort(key=lambda item: item.b.index)
    for check in (_eps, _momentum, _training, _gelu, _padding):
        hits = [(item, text) for item in forward for text in [check(item.a.meta, item.b.meta)] if text]
        if hits:
            item, text = hits[0]
            label = item.b.name if item.a.name == item.b.name else f"{item.a.name} <-> {item.b.name}"
            more = f" (and {len(hits) - 1} more layer(s))" if len(hits) > 1 else ""
            out.append({"kind": check.__name__[1:], "a_name": item.a.name, "b_name": item.b.name,
                        "layers": len(hits), "message": f"{label}{more}: {text}"})
    return out


def _input_finding(pair, ta, tb):
    ra, rb = steps.records(pair, ta, tb)
    if not (ra.stored and rb.stored) or ra.numel != rb.numel or ra.numel == 0:
        return None
    a = np.asarray(ra.read(), np.float64)
    b = np.asarray(rb.read(), np.float64)
    layout_a = ra.meta.get("layout")
    if a.shape != b.shape:
        if pair.rearrangement is None:
            return None
        a, layout_a = pair.rearrangement.apply(a), rb.meta.get("layout")   # NHWC against NCHW
    text = explain_inputs(a, b, layout_a, rb.meta.get("layout"))
    label = pair.label()
    return {"kind": "inputs", "a_name": pair.a_name, "b_name": pair.b_name, "layers": 0,
            "message": f"input {label}: {text}; every layer after it differs for that reason"}


def _number(meta, key):
    value = meta.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _eps(ma, mb):
    a, b = _number(ma, "eps"), _number(mb, "eps")
    if a is None or b is None or abs(a - b) <= 1e-6 * max(abs(a), abs(b)):
        return None
    return (f"eps differs: a {a:g}, b {b:g} (Keras' BatchNormalization defaults to 1e-3, "
            "torch's to 1e-5): set the candidate's epsilon/eps to the reference's")


def _momentum(ma, mb):
    a, b = _number(ma, "momentum"), _number(mb, "momentum")
    if a is None or b is None or abs(a - b) <= 1e-6:
        return None
    return (f"BatchNorm momentum differs: a {a:g}, b {b:g} (torch's convention, the new batch's "
            "weight; Keras' momentum=0.99 is 0.01): the running statistics will drift apart in "
            "training")


def _training(ma, mb):
    a, b = ma.get("training"), mb.get("training")
    if not isinstance(a, bool) or not isinstance(b, bool) or a == b:
        return None
    if not {family(ma.get("op_type")), family(mb.get("op_type"))} & set(MODE_FAMILIES):
        return None
    which = "a" if a else "b"
    return (f"{which} runs in training mode, the other in eval mode (BatchNorm then uses the batch's "
            "statistics, Dropout drops): call model.eval() / pass training=False on that side")


def _gelu(ma, mb):
    a, b = ma.get("approximate"), mb.get("approximate")
    if not isinstance(a, str) or not isinstance(b, str) or a == b:
        return None
    name = {"none": "exact (erf) GELU", "tanh": "the tanh approximation of GELU"}
    return (f"a uses {name.get(a, a)}, b {name.get(b, b)} (up to ~1e-3 apart): "
            "use the reference's approximate= setting")


def _padding(ma, mb):
    a, b = ma.get("pad"), mb.get("pad")
    if not isinstance(a, list) or not isinstance(b, list) or a == b or len(a) != len(b):
        return None
    asymmetric = any(before != after for before, after in a + b)
    why = (" TensorFlow's \"same\" pads the odd pixel after (bottom/right); torch's padding= pads "
           "both sides alike: pad explicitly (F.pad / ZeroPadding2D) to match" if asymmetric else "")
    return f"padding differs: a pads {a}, b {b} ([before, after] per spatial axis).{why}"
