"""A Dask worker plugin for tests/test_diff_dask.py, in a module of its own: workers import it
to unpickle the plugin, and this one imports nothing heavy (the test module imports torch)."""
from __future__ import annotations

import os

import distributed


class KillOnce(distributed.WorkerPlugin):
    """Kills the worker process that starts the first tracediff compare task (once, by a
    marker file holding the task's key), as an out-of-memory kill or a lost node would."""

    def __init__(self, marker):
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("tracediff-compare-"):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(key).encode())
        os.close(fd)
        os._exit(1)
