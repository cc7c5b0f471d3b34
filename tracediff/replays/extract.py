"""``tracediff extract``: a one-layer repro. The candidate's layer is run on the reference's
values of its inputs (as replay runs it); its inputs, its parameters, the reference's output and
the tolerance are written to an HDF5 case, beside a pytest file that runs the layer on them and
fails, naming the local error, while the layer is wrong."""
from __future__ import annotations

import os
import re

import numpy as np

from ..errors import TraceDiffError
from ..recorder import Recorder
from ..trace import open_trace

TEST_FILE = '''"""One-layer repro of {layer!r}, written by `tracediff extract`: the candidate's layer
({candidate}) run on the reference's inputs, stored in {case_name}. It fails while the
layer's output differs from the reference's beyond the tolerance stored there."""
import pathlib

from tracediff.replays.case import check_case

CASE = pathlib.Path(__file__).with_name({case_name!r})


def test_{function}_matches_the_reference_on_its_inputs():
    check_case(CASE)
'''


def extract(candidate_trace, ref, layer, candidate, out_dir, *, spec, call=0, rtol=None,
            atol=None, align="auto", rename=None, tolerances=None):
    """Write ``<out_dir>/<layer>.h5`` and ``<out_dir>/test_<layer>.py``; return their paths.

    ``candidate_trace`` and ``ref`` are the traces (the diff pairs ``layer`` of the candidate,
    call ``call``, with its reference record); ``candidate`` is the torch model and ``spec``
    the ``package.module:object`` the test file loads it by."""
    from ..adapters.base import framework_of
    from ..compare import diff
    from .run import _policy, _reference_inputs, _ReferenceValues

    if framework_of(candidate) != "torch":
        raise TraceDiffError("extract: the candidate must be a torch module for now "
                             "(package.module:object naming one)")
    report = diff(candidate_trace, ref, rtol=rtol, atol=atol, align=align, rename=rename,
                  tolerances=tolerances)
    pair = next((p for p in report.pairs if p.kind == "forward" and p.a_name == layer
                 and p.a_call == call), None)
    if pair is None:
        names = sorted({p.a_name for p in report.pairs if p.kind == "forward"})
        raise TraceDiffError(f"extract: no forward record {layer!r} (call {call}) of "
                             f"{candidate_trace} is paired with {ref}: give one of "
                             f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
    from ..adapters.torch import replay as torch_replay

    module = candidate.get_submodule("" if layer == "<root>" else layer)
    with open_trace(candidate_trace) as trace_a, open_trace(ref) as trace_b:
        values = _ReferenceValues(report, trace_a, trace_b)
        arguments = {(layer, call): None}
        local, _ = torch_replay.replay(candidate, _reference_inputs(trace_b, "torch", candidate),
                                       values, {(layer, call)}, arguments=arguments)
        if arguments[(layer, call)] is None or (layer, call) not in local:
            raise TraceDiffError(f"extract: module {layer!r} was not called on the reference's "
                                 "inputs: name a module the model calls")
        expected = values("forward", layer, call)
        tolerance = _policy(rtol, atol, rename, tolerances).resolve(
            "forward", pair.a_name, pair.b_name, pair.dtype_a, pair.dtype_b, 1)
    os.makedirs(out_dir, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", layer).strip("_") or "root"
    case_path = os.path.join(out_dir, f"{stem}.h5")
    args, kwargs = arguments[(layer, call)]
    with Recorder(case_path, framework="torch", overwrite=True,
                  meta={"candidate": spec, "layer": layer, "call": call,
                        "reference": os.fspath(ref)}) as rec:
        for position, value in enumerate(args):
            _write_argument(rec, f"arg:{position}", value, argument=position)
        for key, value in kwargs.items():
            _write_argument(rec, f"kwarg:{key}", value, keyword=key)
        for name, parameter in module.named_parameters():
            rec.param(name, parameter.detach().numpy())
        for name, buffer in module.named_buffers():
            rec.param(name, buffer.detach().numpy(), buffer=True)
        rec.forward("expected", expected, layer=layer, call=call, rtol=tolerance.rtol,
                    atol=tolerance.atol, candidate=spec, training=module.training)
    test_path = os.path.join(out_dir, f"test_{stem}.py")
    with open(test_path, "w", encoding="utf-8") as handle:
        handle.write(TEST_FILE.format(layer=layer, candidate=spec, case_name=f"{stem}.h5",
                                      function=stem))
    return case_path, test_path


def _write_argument(rec, name, value, **meta):
    """A tensor argument as an ``input`` record; None or a plain number as a constant one."""
    import torch
    if isinstance(value, torch.Tensor):
        rec.input(name, value.detach().numpy(), **meta)
    elif value is None or isinstance(value, (bool, int, float)):
        rec.input(name, np.asarray(0 if value is None else value), constant=True,
                  none=value is None, **meta)
    else:
        raise TraceDiffError(f"extract: argument {name} is a {type(value).__name__}: only "
                             "tensors, numbers and None can be stored in a repro")
