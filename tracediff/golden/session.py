"""Where golden traces live, and which ones no test of this session used.

A golden trace is ``<root>/<test module>/<test name>[-<name>].h5``. One is *unused* when its
test module was collected and either no collected test owns it (the test was renamed or
deleted) or the test that owns it ran without checking it; and, when the whole suite was
collected, when its test module no longer exists. Tests that were deselected or skipped prove
nothing, so their traces are never reported.
"""
from __future__ import annotations

import fnmatch
import os
import re

OBTAINED = ".obtained.h5"
SAFE = re.compile(r"[^A-Za-z0-9_.,=+\-\[\]]")
NAME = re.compile(r"^(?!.*\.obtained$)[A-Za-z0-9_.+=,]+$")   # never mistaken for an obtained trace


def key_of(item) -> tuple:
    """(module folder, file stem of the test) for a collected pytest item."""
    module = item.path.stem if getattr(item, "path", None) else "tests"
    inside = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else item.name
    return module, SAFE.sub("_", inside.replace("::", "."))


def golden_path(root, key, name=None) -> str:
    module, stem = key
    return os.path.join(root, module, stem + (f"-{name}" if name else "") + ".h5")


def obtained_path(golden: str) -> str:
    return golden[:-len(".h5")] + OBTAINED


class Ledger:
    """What this session collected, ran and checked."""

    def __init__(self, root):
        self.root = root
        self.collected = set()      # test keys
        self.ran = set()            # test keys whose call phase ran (passed or failed)
        self.used = set()           # absolute golden paths checked
        self.written = []           # golden paths written this session

    def unused(self, whole_suite=False, test_files=("test_*.py",)) -> list:
        """Unused golden traces. ``whole_suite``: every test module was collected, so a folder
        named like a test module (``test_files``: pytest's ``python_files`` globs) whose module
        was not collected holds only unused traces; other folders are left alone."""
        modules = {module for module, _ in self.collected}
        if whole_suite and os.path.isdir(self.root):
            modules |= {entry for entry in os.listdir(self.root)
                        if any(fnmatch.fnmatch(entry + ".py", glob) for glob in test_files)}
        out = []
        for module in sorted(modules):
            folder = os.path.join(self.root, module)
            if not os.path.isdir(folder):
                continue
            for entry in sorted(os.listdir(folder)):
                if not entry.endswith(".h5") or entry.endswith(OBTAINED):
                    continue
                path = os.path.abspath(os.path.join(folder, entry))
                if path in self.used:
                    continue
                owners = [key for key in self.collected if key[0] == module
                          and (entry[:-3] == key[1] or entry[:-3].startswith(key[1] + "-"))]
                if not owners or any(key in self.ran for key in owners):
                    out.append(path)
        return out
