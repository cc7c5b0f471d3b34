"""The README's example runs as printed and says what its comment says."""
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_names_the_planted_bug(tmp_path):
    pytest.importorskip("torch")
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("2 missing or wrong bias: a - b is a constant offset")
