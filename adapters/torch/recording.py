"""``recording(model, path, every=N)``: a context manager around a user's own training loop.

A step is one forward of the root module. Every N-th step is recorded: its inputs and module
outputs during the forward, its gradients when the user calls ``.backward()``, each trainable
parameter's value and gradient the moment that gradient has been accumulated (before the
optimizer steps, and whatever the loop does with ``zero_grad``), and frozen parameters and
buffers at the end of the forward. Steps in between cost one pre-hook call.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from tracediff.errors import TraceDiffError

from .capture import Capture
from .distributed import data_parallel, run_and_record
from .meta import tensor_meta
from .select import Selection
from .session import FLUSH_EVERY, check_level, open_recorder, original_module


class Recording:
    """Returned by ``recording()``; ``loss(value)`` records the loss of the current step."""

    def __init__(self, model, path, every=1, values=False, loss=True, *, level="module",
                 include=None, exclude=None, kinds=None, overwrite=False, dims=None, seed=None,
                 model_name=None, params=True, flush_every=FLUSH_EVERY, background=None, shards=None,
                 decode=False):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise TraceDiffError(f"recording(every={every!r}): every must be a whole number >= 1")
        wrapper, module = run_and_record(model)
        self.module, self.compiled = original_module(module)
        # DDP averages gradients at the end of the backward, after they were accumulated
        self.after_all_reduce = wrapper is not None
        self._reduced_queued = False
        self.path = path
        self.every = every
        self.values = values
        self.record_loss = loss
        self.level = check_level(level)
        self.selection = Selection(include, exclude, kinds)
        self.params = params
        # decode=True: each forward is a decode step of a generation (``decode_step``), not a
        # training step; parameters are recorded at the first only (generation changes none)
        self.decode = decode
        self._position = 0          # decode: the next sequence position
        self._options = dict(overwrite=overwrite, dims=dims, seed=seed, model_name=model_name,
                             flush_every=flush_every, background=background, shards=shards,
                             data_parallel=data_parallel(wrapper, self.module))
        self.steps_seen = 0
        self.step = None            # index of the step being recorded, None between them
        self.recorder = self.writer = self.capture = None
        self._root_handle = None
        self._step_handles = []
        self._mode_on = False
        self._loss_seen = False

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self):
        self.recorder, self.writer = open_recorder(
            self.module, self.path, values=self.values, level=self.level, compiled=self.compiled,
            extra={"every": self.every}, **self._options)
        self.capture = Capture(self.module, self.writer, self.selection, level=self.level, grads=True)
        self._root_handle = self.module.register_forward_pre_hook(self._on_step, with_kwargs=True)
        return self

    def __exit__(self, exc_type, exc, tb):
        complete = False
        try:
            self._root_handle.remove()
            self._end_forward()
            self._end_step()
            if exc_type is None:
                self.writer.close()
                complete = True
        finally:
            try:
                if not complete:
                    self._remove_hooks()
                    self.writer.close(raise_errors=False)
            finally:
                self.recorder.close(complete=complete)
        return False

    def loss(self, value, **meta):
        """Record ``value`` as the loss of the step being recorded; ignored between recorded
        steps and after the step's first loss (one loss record per step). ``meta``: what the
        checks read of the loss (docs/conventions.md), e.g. ``ignore_index=-100, pad_id=0``."""
        if self.step is not None and not self._loss_seen and self.selection.wants("loss", "loss"):
            self._loss_seen = True
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            self.writer.write("loss", "loss", tensor, **meta, **tensor_meta(tensor),
                              **self.capture.consumed([tensor]))

    # -- hooks -------------------------------------------------------------------------------
    def _on_step(self, module, args, kwargs):
        self._end_step()
        n = self.steps_seen
        self.steps_seen += 1
        positions = self._positions(args, kwargs) if self.decode else None   # counted every step
        if n % self.every:
            return None
        self.step = n
        self._loss_seen = False
        if self.decode:
            self.recorder.decode_step(n, positions=positions)
        else:
            self.recorder.step(n)
        capture = self.capture
        capture.start()
        capture.inputs(args, kwargs)
        capture.attach()
        # registered after the capture's hooks, so it runs after <root> has been recorded
        self._step_handles.append(module.register_forward_hook(self._on_forward_end, always_call=True))
        if self.params and torch.is_grad_enabled() and not self.decode:
            for name, p in self.module.named_parameters():
                if p.requires_grad:
                    self._step_handles.append(p.register_post_accumulate_grad_hook(self._grad_ready(name)))
        if capture.mode is not None:
            capture.mode.__enter__()
            self._mode_on = True
        return None

    def _on_forward_end(self, module, args, output):
        self._end_forward()
        if self.record_loss:
            loss = model_loss(output)
            if loss is not None:
                self.loss(loss, **model_loss_meta(self.module))
        if self.params and not (self.decode and self.step):
            # trainable parameters arrive with their gradients; without autograd, record them now
            trainable = None if self.decode or not torch.is_grad_enabled() else False
            self.capture.parameters(grads=False, trainable=trainable)

    def _positions(self, args, kwargs) -> tuple:
        """[start, stop): the sequence positions this decode step computes: Hugging Face's
        ``cache_position`` where the model is given one, else the new tokens' count after
        those of the steps before."""
        cache_position = kwargs.get("cache_position")
        if isinstance(cache_position, torch.Tensor) and cache_position.numel():
            start, stop = int(cache_position.min()), int(cache_position.max()) + 1
        else:
            tokens = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
            width = tokens.shape[1] if isinstance(tokens, torch.Tensor) and tokens.ndim >= 2 else 1
            start, stop = self._position, self._position + width
        self._position = stop
        return start, stop

    def _grad_ready(self, name):
        def on_accumulated(p):
            if self.after_all_reduce:
                self._queue_reduced_grads()
            else:
                self.capture.parameter(name, p, grads=True)
        return on_accumulated

    def _queue_reduced_grads(self):
        """Under DDP: record the gradients once the backward's final callbacks ran. DDP queues
        its own (which waits for the all-reduce and writes the averages) during the backward;
        ours queues a second one when it runs, which the engine runs after every callback
        queued before it."""
        if self._reduced_queued:
            return
        self._reduced_queued = True
        engine = torch.autograd.Variable._execution_engine
        engine.queue_callback(lambda: engine.queue_callback(self._record_reduced_grads))

    def _record_reduced_grads(self):
        self._reduced_queued = False
        for name, p in self.module.named_parameters():
            if p.requires_grad and p.grad is not None:
                self.capture.parameter(name, p, grads=True)

    def _end_forward(self):
        if self._mode_on:
            self._mode_on = False
            self.capture.mode.__exit__(None, None, None)
        self.capture.detach_modules()

    def _end_step(self):
        """Remove the previous recorded step's hooks and write what it left pending."""
        self._remove_hooks()
        self.writer.drain()
        self.step = None

    def _remove_hooks(self):
        for handle in self._step_handles:
            handle.remove()
        self._step_handles.clear()
        self.capture.detach()


def model_loss_meta(module) -> dict:
    """What the checks read of a model's own loss: Hugging Face models' losses skip labels of
    -100 (``ignore_index``), and their config names the padding token (``pad_id``)."""
    if not type(module).__module__.startswith("transformers."):
        return {}
    meta = {"ignore_index": -100}
    pad = getattr(getattr(module, "config", None), "pad_token_id", None)
    if isinstance(pad, int):
        meta["pad_id"] = pad
    return meta


def model_loss(output):
    """The ``loss`` a model returns itself (Hugging Face models given labels)."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def recording(model, path, every=1, values=False, loss=True, **options) -> Recording:
    """Record every ``every``-th step of a training loop run inside the ``with`` block."""
    return Recording(model, path, every=every, values=values, loss=loss, **options)
