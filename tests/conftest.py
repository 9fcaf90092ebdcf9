"""Test-wide setup and tiers.

8 fake CPU devices for the sharding tests, set before JAX is imported, and no LLVM
optimisation of the CPU code XLA compiles (`training_runs.QUICK_COMPILE`), here and in the
end-to-end runs' subprocesses (`training_runs.xla_flags`, the notebooks): the suite's many
small programs spend more time compiling than running. It cut tests/test_models.py with
tests/test_initializers.py from 191 to 116 CPU-seconds, and three training-run tests from 232
to 178. XLA's own HLO passes (fusion, layouts, sharding) run as ever. The demo's test, whose
run is mostly computation, runs it in a subprocess that compiles as users' runs do.

Tiers (markers, declared in setup.cfg):
- `slow`: end-to-end runs (training subprocesses, notebooks, the demo's code path);
  `pytest -m "not slow"` is the quick local loop, CI runs everything.
- `reference`: compares against torch / open_clip / transformers / scikit-learn / scipy (the `test`
  extra). Marked automatically for test modules that import one of them; those modules import
  them with `pytest.importorskip`, so without the extra they are skipped, not collection errors.
"""

import glob
import os
import sys
import tempfile
import time

import pytest

from training_runs import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SESSION_START = time.time()
REFERENCE_PACKAGES = ("torch", "open_clip", "transformers", "sklearn", "scipy", "reference")


def _uses_reference(module) -> bool:
    for value in vars(module).values():
        name = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if isinstance(name, str) and name.split(".")[0] in REFERENCE_PACKAGES:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    marked = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module.__name__ not in marked:
            marked[module.__name__] = _uses_reference(module)
        if marked[module.__name__]:
            item.add_marker(pytest.mark.reference)


def pytest_report_header(config):
    missing = [p for p in REFERENCE_PACKAGES[:-1] if _missing(p)]
    return f"reference packages missing (their tests skip): {missing}" if missing else None


def _missing(package: str) -> bool:
    if package in sys.modules:
        return False
    import importlib.util

    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):
        return True


def pytest_sessionfinish(session, exitstatus):
    """TFDS (`DatasetInfo.initialize_from_bucket`) makes an empty temporary folder for every
    catalogue builder made without its data (imagenet2012 under `tfds.testing.mock_data`),
    about 100 a run; the empty ones this session made are removed (rmdir: never a full one)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "tmp*tfds")):
        try:
            if os.stat(path).st_mtime >= SESSION_START:
                os.rmdir(path)
        except OSError:
            pass
