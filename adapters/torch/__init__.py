"""PyTorch adapter (``from tracediff.adapters import torch as tdt``): a model's per-module (or
per-op) outputs, their gradients, the loss, parameters and their gradients. See docs/torch.md."""
from .checks import check_batch_independence, overfit_check
from .generation import record_generation
from .record import record
from .recording import Recording, recording

__all__ = ["record", "record_generation", "recording", "Recording", "check_batch_independence", "overfit_check"]
