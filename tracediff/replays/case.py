"""Running a one-layer repro written by ``tracediff extract`` (the pytest file calls
``check_case``)."""
from __future__ import annotations

import numpy as np

from ..compare.metrics import compare
from ..trace import open_trace


def check_case(path) -> None:
    """Load the candidate named in the case, give its layer the stored parameters, run it on the
    stored inputs and compare with the reference's output; AssertionError naming the local
    error when they differ beyond the stored tolerance."""
    import torch

    from .candidate import load_candidate

    with open_trace(path) as case:
        expected = case.get("expected")
        meta = expected.meta
        model = load_candidate(meta["candidate"], "candidate")
        layer = model.get_submodule("" if meta["layer"] == "<root>" else meta["layer"])
        args, kwargs = [], {}
        for r in case:
            if r.kind != "input":
                continue
            if r.meta.get("none"):
                value = None
            elif r.meta.get("constant"):
                value = r.read().item()
            else:
                value = torch.from_numpy(r.read().copy())
            if "keyword" in r.meta:
                kwargs[r.meta["keyword"]] = value
            else:
                args.append(value)
        state = {r.name: torch.from_numpy(r.read().copy()) for r in case if r.kind == "param"}
        layer.load_state_dict(state, strict=False)
        layer.train(bool(meta.get("training")))
        for sub in layer.modules():   # as replay runs it: dropout off
            if isinstance(sub, torch.nn.modules.dropout._DropoutNd):
                sub.eval()
        with torch.no_grad():
            output = layer(*args, **kwargs)
        got = output.detach().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
        want = expected.read()
    result = compare(got.astype(np.float64), want.astype(np.float64), meta["rtol"], meta["atol"])
    stats = result.stats()
    assert result.passed, (
        f"{meta['layer']} of {meta['candidate']} on the reference's inputs differs from the "
        f"reference: local rel_l2 {stats['rel_l2']:.3g}, max_abs {stats['max_abs']:.3g} "
        f"(rtol {meta['rtol']:.3g}, atol {meta['atol']:.3g})")
