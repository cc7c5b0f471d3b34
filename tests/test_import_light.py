"""``import tracediff`` imports NumPy and h5py, never a framework."""
import subprocess
import sys

FRAMEWORKS = ["torch", "tensorflow", "keras", "onnx", "onnxruntime", "jax", "ai_edge_litert",
              "ml_dtypes", "rich",
              "transformers"]


def test_import_tracediff_imports_no_framework():
    code = ("import sys, tracediff, tracediff.adapters; "
            f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_diff_and_check_entry_points_stay_framework_free():
    code = ("import sys, tracediff as td; td.diff; td.check; td.gradcheck; "
            "import tracediff.cli; "
            f"print(sorted(m for m in {FRAMEWORKS[:7]!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
