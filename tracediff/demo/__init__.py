"""The demo: from-scratch NumPy nets with planted bugs (``numpy_nets``, ``bugs``), their
PyTorch references (``torch_nets``, imported only when used) and the runner (``run``)."""
from .bugs import CATALOGUE, Bug
from .numpy_nets import DIMS, build, init_params, make_inputs

__all__ = ["CATALOGUE", "Bug", "DIMS", "build", "init_params", "make_inputs"]
