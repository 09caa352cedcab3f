"""`import bioplaus_kernels` when the compiled library does not load: one ImportError that says what was built,
against which torch, and how to rebuild."""
import subprocess
import sys

_SCRIPT = """
import sys
sys.modules["bioplaus_kernels._C"] = None  # any import of it now fails, as an ABI mismatch would
try:
    import bioplaus_kernels
except ImportError as e:
    print(type(e).__name__, "|", e)
else:
    print("imported")
"""


def test_failed_load_is_one_clear_error():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("ImportError | bioplaus_kernels: the compiled operator library bioplaus_kernels._C did "
                           "not load"), line
    assert "it was built against torch " in line or "no build record was found" in line
    import torch
    assert f"this process runs torch {torch.__version__}" in line
    assert "pip install --no-build-isolation -e ." in line
