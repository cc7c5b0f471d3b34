"""The manifest of a multi-rank trace: a folder holding one trace file per rank and
``manifest.json`` naming them, with the world size and the device mesh (docs/format.md)."""
from __future__ import annotations

import json
import os

from ..errors import TraceFormatError

MANIFEST = "manifest.json"
FORMAT_NAME = "tracediff.ranks"
VERSION = 1


def rank_file(rank: int) -> str:
    """The default name of a rank's trace in the folder."""
    return f"rank-{int(rank):05d}.h5"


def is_ranked(path) -> bool:
    """A folder holding a manifest, or rank files without one (which ``read`` then names)."""
    if not os.path.isdir(path):
        return False
    return os.path.isfile(os.path.join(path, MANIFEST)) or any(
        name.startswith("rank-") and name.endswith(".h5") for name in os.listdir(path))


def write(folder, world_size: int, files: list, mesh_shape=None, mesh_dims=None):
    """Write the manifest (rank 0 does, when recording starts): ``files[r]`` is rank r's trace,
    relative to the folder."""
    mesh_shape = list(mesh_shape or [world_size])
    manifest = {"format": FORMAT_NAME, "version": VERSION, "world_size": int(world_size),
                "ranks": [{"rank": r, "file": f} for r, f in enumerate(files)],
                "mesh": {"shape": mesh_shape,
                         "dims": list(mesh_dims or [f"dim{i}" for i in range(len(mesh_shape))])}}
    target = os.path.join(folder, MANIFEST)
    partial = target + ".tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(partial, target)   # a reader never sees half a manifest
    return manifest


def read(folder) -> dict:
    """The manifest, checked: one line naming what is wrong, never a traceback."""
    target = os.path.join(folder, MANIFEST)
    try:
        with open(target, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise TraceFormatError(
            f"{folder} is a folder without {MANIFEST}: not a multi-rank trace (rank 0 writes the "
            "manifest when recording starts); record it again") from None
    except (OSError, ValueError) as exc:
        raise TraceFormatError(f"{target} is unreadable ({exc}); record the run again") from None
    world = manifest.get("world_size") if isinstance(manifest, dict) else None
    ranks = manifest.get("ranks") if isinstance(manifest, dict) else None
    if manifest.get("format") != FORMAT_NAME if isinstance(manifest, dict) else True:
        raise TraceFormatError(f"{target} is not a tracediff rank manifest; record the run again")
    if not isinstance(world, int) or world < 1 or not isinstance(ranks, list) or len(ranks) != world \
            or not all(isinstance(e, dict) and e.get("rank") == r and isinstance(e.get("file"), str)
                       for r, e in enumerate(ranks)):
        raise TraceFormatError(
            f"{target} is damaged: it must list ranks 0..world_size-1 with their files; "
            "record the run again")
    mesh = manifest.get("mesh") if isinstance(manifest.get("mesh"), dict) else {}
    shape = mesh.get("shape") if isinstance(mesh.get("shape"), list) else [world]
    if not all(isinstance(s, int) and s > 0 for s in shape) or _product(shape) != world:
        raise TraceFormatError(f"{target} is damaged: mesh shape {shape} does not hold {world} ranks")
    manifest["mesh"] = {"shape": shape, "dims": mesh.get("dims") or [f"dim{i}" for i in range(len(shape))]}
    return manifest


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out
