"""Training runs through main.py in subprocesses, shared by the end-to-end test files: the
tiny config on 8 forced host devices, its logged records read back."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No LLVM optimisation of the CPU code XLA compiles: the suite's small programs and short runs
# spend more time compiling than running (conftest.py sets it for the test processes).
QUICK_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices):
    """XLA_FLAGS of a test's subprocess: `devices` forced host devices, `QUICK_COMPILE`."""
    return f"--xla_force_host_platform_device_count={devices} {QUICK_COMPILE}"


def run_env(tfds_dir, devices=8, **extra):
    env = dict(os.environ, TFDS_DATA_DIR=tfds_dir, **extra)
    env["XLA_FLAGS"] = xla_flags(devices)
    return env


def start_run(workdir, tfds_dir, *overrides, devices=8, cwd=ROOT, **env):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config",
           os.path.join(ROOT, "configs", "tiny.py"), "--workdir", str(workdir),
           "--config.log_every_steps=1", "--config.checkpoint.every_steps=4",
           "--config.total_steps=12", *overrides]
    return subprocess.Popen(cmd, cwd=cwd, env=run_env(tfds_dir, devices, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=900):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def logged(workdir):
    """step -> logged metrics (a run in progress may still hold replayed steps)."""
    return {r["step"]: r for r in records(workdir)}


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
