"""User rules from TOML: renames, explicit pairs, and per-layer tolerances.

```toml
[rename.a]                      # regex -> replacement (re.sub), applied to a's record names
"^dense_(\\d+)" = "fc\\1"
[rename.b]
"^model\\." = ""

[[pair]]                        # explicit pairs of forward records (kind optional)
a = "conv_a"
b = "features.0"

[tolerances]                    # glob (on either name, optional "kind:" prefix) -> tolerance
"attn.*" = {rtol = 1e-4, atol = 1e-5}
"backward:head" = {rtol = 1e-3}
```
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import TraceDiffError
from .tolerances import LayerTolerance

KINDS = ("forward", "backward", "param", "param_grad", "input", "loss")


@dataclass
class Rules:
    rename_a: list = field(default_factory=list)     # [(compiled regex, replacement)]
    rename_b: list = field(default_factory=list)
    pairs: list = field(default_factory=list)        # [(kind, a_name, b_name)]
    tolerances: list = field(default_factory=list)   # [LayerTolerance]

    def rename(self, side: str, name: str) -> str:
        for pattern, replacement in (self.rename_a if side == "a" else self.rename_b):
            name = pattern.sub(replacement, name)
        return name

    @property
    def has_renames(self) -> bool:
        return bool(self.rename_a or self.rename_b or self.pairs)

    def merged(self, other: "Rules") -> "Rules":
        return Rules(self.rename_a + other.rename_a, self.rename_b + other.rename_b,
                     self.pairs + other.pairs, self.tolerances + other.tolerances)


def load(path) -> Rules:
    """Read a rules file; every mistake is one line naming the file and the entry."""
    path = os.fspath(path)
    return parse(_read_toml(path, "rules"), path)


def _read_toml(path: str, what: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise TraceDiffError(f"cannot read {what} file {path}: no such file") from None
    except OSError as exc:
        raise TraceDiffError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TraceDiffError(f"{what} file {path} is not valid TOML ({exc}); fix the syntax") from None


def parse(data: dict, where: str = "rules") -> Rules:
    rules = Rules()
    unknown = sorted(set(data) - {"rename", "pair", "pairs", "tolerances", "tolerance"})
    if unknown:
        raise TraceDiffError(
            f"{where}: unknown table(s) {', '.join(unknown)}; use rename, pair and tolerances")
    rename = data.get("rename", {})
    if not isinstance(rename, dict):
        raise TraceDiffError(f"{where}: [rename] must be a table with sub-tables a and b")
    for side, table in rename.items():
        if side not in ("a", "b") or not isinstance(table, dict):
            raise TraceDiffError(
                f"{where}: [rename.{side}] is not allowed; write [rename.a] or [rename.b] with "
                "\"regex\" = \"replacement\" entries")
        target = rules.rename_a if side == "a" else rules.rename_b
        for pattern, replacement in table.items():
            if not isinstance(replacement, str):
                raise TraceDiffError(f"{where}: [rename.{side}] {pattern!r} must map to a string")
            try:
                target.append((re.compile(pattern), replacement))
            except re.error as exc:
                raise TraceDiffError(
                    f"{where}: [rename.{side}] {pattern!r} is not a valid regular expression ({exc})") from None
    for entry in list(data.get("pair", [])) + list(data.get("pairs", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("a"), str) or not isinstance(entry.get("b"), str):
            raise TraceDiffError(f"{where}: each [[pair]] needs string fields a and b, got {entry!r}")
        kind = entry.get("kind", "forward")
        if kind not in KINDS:
            raise TraceDiffError(f"{where}: [[pair]] kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
        rules.pairs.append((kind, entry["a"], entry["b"]))
    rules.tolerances.extend(parse_tolerances(data, where))
    return rules


def parse_tolerances(data: dict, where: str) -> list:
    out = []
    table = data.get("tolerances", {})
    if not isinstance(table, dict):
        raise TraceDiffError(f"{where}: [tolerances] must be a table of \"glob\" = {{rtol = .., atol = ..}}")
    items = list(table.items())
    for entry in data.get("tolerance", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise TraceDiffError(f"{where}: each [[tolerance]] needs a string field name (a glob)")
        items.append((entry["name"], entry))
    for pattern, spec in items:
        if not isinstance(spec, dict):
            raise TraceDiffError(f"{where}: tolerance {pattern!r} must be a table like {{rtol = 1e-4, atol = 1e-6}}")
        values = {}
        for key in ("rtol", "atol"):
            value = spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise TraceDiffError(f"{where}: tolerance {pattern!r} {key} must be a number >= 0, got {value!r}")
            values[key] = None if value is None else float(value)
        if values["rtol"] is None and values["atol"] is None:
            raise TraceDiffError(f"{where}: tolerance {pattern!r} sets neither rtol nor atol")
        out.append(LayerTolerance(pattern, values["rtol"], values["atol"]))
    return out


def load_tolerances(path) -> list:
    """A file holding only tolerances (``--tolerances``): a [tolerances] table, or top-level
    ``"glob" = {rtol, atol}`` entries."""
    path = os.fspath(path)
    data = _read_toml(path, "tolerances")
    if "tolerances" in data or "tolerance" in data:
        return parse_tolerances(data, path)
    return parse_tolerances({"tolerances": data}, path)
