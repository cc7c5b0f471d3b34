"""Check `batchnorm_batch`: BatchNorm in training mode normalising over too few values per
channel, where the batch statistics are noise (or, with 2 values, every output is +-1)."""
from __future__ import annotations

from .context import CheckContext, op_family, unit_axis
from .result import CheckResult, skip

ID = "batchnorm_batch"
# With n values a channel's normalised outputs are +-1 for n = 2 whatever the inputs; the std
# estimate's relative error is ~1/sqrt(2(n-1)) (27% at n = 8). Wu & He (2018, Group
# Normalization, fig. 1) show BatchNorm's ImageNet error rising steeply below 8 images per
# batch; Ioffe (2017, Batch Renormalization) attributes it to the noisy statistics.
FAIL_AT_MOST, WARN_BELOW = 2, 8


def run(ctx: CheckContext) -> CheckResult:
    threshold = (f"values per channel normalised by a training-mode BatchNorm: warn below "
                 f"{WARN_BELOW}, fail at {FAIL_AT_MOST} or fewer")
    layers = [r for r in ctx.forward if op_family(r) == "batchnorm" and r.numel and len(r.shape) >= 2
              and _training(ctx, r)]
    if not layers:
        return skip(ID, "no BatchNorm layer in training mode (meta op_type BatchNorm, training=True)",
                    threshold)
    counts = {r.name: r.numel // r.shape[unit_axis(r, ctx)] for r in layers}
    low = sorted((n for n, v in counts.items() if v < WARN_BELOW), key=lambda n: counts[n])
    smallest = min(counts, key=counts.get)
    if not low:
        return CheckResult(ID, "pass", f"at least {counts[smallest]} values per channel "
                           f"(`{smallest}`) over {len(counts)} BatchNorm layer(s)",
                           value=counts[smallest], threshold=threshold, details={"values": counts})
    first = low[0]
    status = "fail" if counts[first] <= FAIL_AT_MOST else "warn"
    shape = next(r.shape for r in layers if r.name == first)
    return CheckResult(
        ID, status, f"`{first}` normalises {counts[first]} value(s) per channel (output shape "
        f"{list(shape)}): its batch mean and variance are noise"
        + (" and every output is +-1 whatever the input" if counts[first] <= 2 else "")
        + (f"; {len(low) - 1} more layer(s)" if len(low) > 1 else ""),
        layers=low, value=counts[first], threshold=threshold, details={"values": counts},
        advice="use a larger batch, or a normalisation that does not depend on the batch "
               "(GroupNorm, LayerNorm), or freeze BatchNorm (eval mode) for small batches")


def _training(ctx, record) -> bool:
    training = record.meta.get("training")
    if isinstance(training, bool):
        return training
    from .mode import _is_evaluation
    return not _is_evaluation(ctx)[0]
