"""Python code run in a fresh interpreter: for what a test process (TensorFlow and JAX
already loaded) cannot show, such as what an import loads or the order of imports."""

import subprocess
import sys


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `code` with this interpreter and asserts it exited 0 (the stderr tail if not)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    return result
