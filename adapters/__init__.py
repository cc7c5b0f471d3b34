"""Framework adapters, each importing its framework lazily: ``from tracediff.adapters import torch``."""
