"""Op-level capture: a TorchFunctionMode, entered only around the model call, that hands every
tensor-producing torch function to the Capture. Inside ``__torch_function__`` the mode is off,
so ``F.layer_norm`` is one op, not the dozen it calls."""
from __future__ import annotations

from torch.overrides import TorchFunctionMode

# Queries and property reads that describe a tensor rather than compute one.
_SKIP = frozenset({
    "__get__", "__set__", "__setitem__", "__delitem__", "__len__", "__bool__", "__repr__",
    "__format__", "__hash__", "__index__", "__int__", "__float__", "__iter__", "__contains__",
    "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset", "data_ptr",
    "element_size", "is_contiguous", "is_floating_point", "is_complex", "item", "tolist",
    "register_hook", "retain_grad", "requires_grad_", "get_device", "untyped_storage",
})


def raw_name(func) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def op_name(raw: str) -> str:
    """``matmul`` for torch.matmul and Tensor.__matmul__; ``iadd`` for ``+=``."""
    if raw.startswith("__") and raw.endswith("__") and len(raw) > 4:
        return raw[2:-2]
    return raw


class OpMode(TorchFunctionMode):
    def __init__(self, capture):
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if not self.capture.busy:
            raw = raw_name(func)
            if raw not in _SKIP:
                self.capture.op(op_name(raw), output, args, kwargs)
        return output
