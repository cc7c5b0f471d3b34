"""Health checks that run a torch model: batch independence (no mixing across the batch axis)
and tiny-batch overfitting. Both return a ``CheckResult`` that ``td.check(..., extra=[...])``
adds to a trace's report."""
from __future__ import annotations

import math

import torch

from tracediff.checks.result import CheckResult
from tracediff.errors import TraceDiffError

MIX_RTOL = 1e-9       # gradient leaking to another sample, relative to the sample's own
OVERFIT_NEAR_ZERO = 0.05   # final loss below 5% of the initial one: memorised
OVERFIT_LEARNING = 0.5     # below half: learning, but not memorising yet
MAX_OVERFIT_SAMPLES = 20


class OverfitResult(CheckResult):
    """``CheckResult`` with the loss curve of the tiny-batch run."""

    @property
    def curve(self) -> list:
        return self.details.get("curve", [])


def check_batch_independence(model, inputs, batch_axis=0) -> CheckResult:
    """d(loss of sample i)/d(input of sample j) must be zero for j != i.

    The model runs in eval mode (batch norm in training mode mixes the batch on purpose) and is
    put back in its mode afterwards. Gradients are taken w.r.t. the float inputs, or, for token
    ids, w.r.t. the outputs of the embedding layers. The first module whose output mixes
    samples is named.
    """
    threshold = f"gradient of sample i's output w.r.t. other samples' inputs == 0 (relative {MIX_RTOL:g})"
    tensors = _as_tuple(inputs)
    floats = [t for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    embeddings = [] if floats else [m for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    if not floats and not embeddings:
        raise TraceDiffError("check_batch_independence: no floating-point input and no embedding "
                             "layer to take gradients of; pass the model's float inputs")
    first = floats[0] if floats else next(t for t in tensors if torch.is_tensor(t))
    size = first.shape[batch_axis] if first.dim() > batch_axis else 0
    if size < 2:
        raise TraceDiffError(f"check_batch_independence: the batch axis {batch_axis} has {size} "
                             "sample(s); pass a batch of 2 or more")
    leaves = [t.detach().clone().requires_grad_(True) if any(t is p for p in floats) else t
              for t in tensors]
    probe_leaves = [t for t in leaves if torch.is_tensor(t) and t.requires_grad]
    captured = []
    handles = [m.register_forward_hook(_capture(name or "<root>", captured))
               for name, m in model.named_modules()]
    # Integer inputs (token ids) have no gradient: probe the embeddings' outputs instead.
    handles += [m.register_forward_hook(_as_leaf(probe_leaves)) for m in embeddings]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = _first_tensor(model(*leaves))
            samples = sorted({0, size // 2, size - 1})
            leak, own = _leak(out, probe_leaves, samples, batch_axis)
            if leak <= MIX_RTOL * own:
                return CheckResult("batch_mixing", "pass", f"no gradient crosses samples "
                                   f"(probed samples {samples} of {size})", value=0.0, threshold=threshold)
            layer = "<root>"
            for name, tensor in captured:
                if tensor.dim() > batch_axis and tensor.shape[batch_axis] == size and tensor.requires_grad:
                    l2, o2 = _leak(tensor, probe_leaves, samples, batch_axis)
                    if l2 > MIX_RTOL * o2:
                        layer = name
                        break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    ratio = leak / own if own else math.inf
    return CheckResult(
        "batch_mixing", "fail", f"the output of sample i depends on other samples' inputs "
        f"(leak {ratio:.3g} of its own gradient); first mixing output: `{layer}`",
        layers=[layer], value=ratio, threshold=threshold,
        advice="a view/reshape/transpose moves data across the batch axis (e.g. x.view(-1, B) "
               "instead of x.view(B, -1), or a permute that puts batch elsewhere): reshape with the "
               "batch axis kept first, or a reduction over the batch axis")


def _leak(out, leaves, samples, batch_axis):
    """(largest gradient on other samples, largest on the probed sample) over the probes."""
    leak = own = 0.0
    generator = torch.Generator().manual_seed(0)
    for i in samples:
        piece = out.select(batch_axis, i)
        weights = torch.randn(piece.shape, generator=generator, dtype=piece.dtype)
        grads = torch.autograd.grad((piece * weights).sum(), leaves, retain_graph=True, allow_unused=True)
        for g in grads:
            if g is None:
                continue
            g = g.detach().abs()
            mine = g.select(batch_axis, i)
            others = torch.cat([g.narrow(batch_axis, 0, i), g.narrow(batch_axis, i + 1, g.shape[batch_axis] - i - 1)], batch_axis)
            own = max(own, float(mine.max()) if mine.numel() else 0.0)
            leak = max(leak, float(others.max()) if others.numel() else 0.0)
    return leak, max(own, 1e-30)


def _as_leaf(leaves):
    def hook(module, args, output):
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf
    return hook


def _capture(name, captured):
    def hook(module, args, output):
        tensor = _first_tensor(output, strict=False)
        if tensor is not None:
            captured.append((name, tensor))
    return hook


def _first_tensor(value, strict=True):
    if torch.is_tensor(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item, strict=False)
        if found is not None:
            return found
    if strict:
        raise TraceDiffError(f"the model returned {type(value).__name__} without a tensor: "
                             "batch independence needs a tensor output")
    return None


def _as_tuple(inputs):
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def overfit_check(model, batch, loss_fn, steps=200, lr=3e-3) -> OverfitResult:
    """Train on 2-20 samples with Adam and report whether the loss gets near zero.

    ``batch`` is the inputs, or an ``(inputs, targets)`` pair; ``loss_fn(output)`` or
    ``loss_fn(output, targets)``. Beyond 20 samples the first 20 are used. The model's
    parameters, buffers and mode are restored afterwards; ``result.curve`` holds the losses.
    """
    threshold = (f"final loss <= {OVERFIT_NEAR_ZERO:g} x initial after {steps} steps "
                 f"(warn <= {OVERFIT_LEARNING:g} x)")
    if not (isinstance(steps, int) and steps >= 1):
        raise TraceDiffError(f"overfit_check: steps must be a positive integer, got {steps!r}")
    inputs, targets = (batch if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None))
    inputs = _as_tuple(inputs)
    size = inputs[0].shape[0] if torch.is_tensor(inputs[0]) and inputs[0].dim() else 0
    if size < 2:
        raise TraceDiffError(f"overfit_check: the batch has {size} sample(s); pass 2 to "
                             f"{MAX_OVERFIT_SAMPLES} samples (batch axis first)")
    n = min(size, MAX_OVERFIT_SAMPLES)
    inputs = tuple(t[:n] if torch.is_tensor(t) and t.dim() and t.shape[0] == size else t for t in inputs)
    if torch.is_tensor(targets) and targets.dim() and targets.shape[0] == size:
        targets = targets[:n]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TraceDiffError("overfit_check: the model has no parameter with requires_grad=True")
    optimizer = torch.optim.Adam(trainable, lr=lr)
    curve = []
    model.train()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                output = model(*inputs)
                loss = loss_fn(output) if targets is None else loss_fn(output, targets)
                value = float(loss.detach())
                curve.append(value)
                if not math.isfinite(value):
                    break
                loss.backward()
                optimizer.step()
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    first, last = curve[0], curve[-1]
    best = min(curve) if all(math.isfinite(v) for v in curve) else math.nan
    details = {"curve": curve, "samples": n, "steps": len(curve), "lr": lr}
    summary = f"loss {first:.4g} -> {last:.4g} (best {best:.4g}) in {len(curve)} Adam steps on {n} samples"
    if not math.isfinite(last):
        return OverfitResult("overfit", "fail", f"the loss became non-finite: {summary}", value=last,
                             threshold=threshold, details=details,
                             advice="lower the learning rate; see the nonfinite check on a trace")
    ratio = last / first if first > 0 else 0.0
    if first <= 0 or ratio <= OVERFIT_NEAR_ZERO:
        return OverfitResult("overfit", "pass", f"memorised: {summary}", value=ratio,
                             threshold=threshold, details=details)
    learning = ratio <= OVERFIT_LEARNING
    return OverfitResult(
        "overfit", "warn" if learning else "fail",
        (f"learning but not memorised: {summary}" if learning else f"cannot overfit a tiny batch: {summary}"),
        value=ratio, threshold=threshold, details=details,
        advice=("train longer or raise the learning rate; if it plateaus, the model lacks capacity "
                "or its labels contradict" if learning else
                "a model that cannot memorise a few samples has a bug: a detached tensor, a frozen "
                "parameter, a wrong loss/label pairing, or a dead activation (run td.check on a trace)"))
