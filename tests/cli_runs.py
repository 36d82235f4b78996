"""`fer run` in a subprocess, as a user starts it: straight through, or killed inside an epoch and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

FER = [sys.executable, "-m", "fer_core"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_dir_under(out: Path) -> Path:
    """The one run directory `fer run --out OUT` made (OUT/<recipe name>/<timestamp>)."""
    return next(next(out.iterdir()).iterdir())


def fer_run(recipe: Path, out: Path, timeout: float) -> Path:
    """`fer run RECIPE --out OUT` to its end; its run directory."""
    subprocess.run([*FER, "run", str(recipe), "--out", str(out)], check=True, env=ENV, capture_output=True,
                   timeout=timeout)
    return run_dir_under(out)


def killed_and_resumed(recipe: Path, out: Path, epochs: int, after: float, timeout: float) -> Path:
    """`fer run RECIPE --out OUT` SIGKILLed ``after`` seconds past its first checkpoint (inside epoch 2; the
    test fails if the run had already finished), then `fer run --resume` to the end; its run directory."""
    proc = subprocess.Popen([*FER, "run", str(recipe), "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not list(out.glob("*/*/checkpoints/last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = run_dir_under(out)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["counters"]["epoch"] < epochs
    subprocess.run([*FER, "run", "--resume", str(run_dir)], check=True, env=ENV, capture_output=True,
                   timeout=timeout)
    return run_dir
