"""`fer run --nproc N`: re-launch the same command under torchrun, one process per rank."""

from __future__ import annotations

import subprocess
import sys


def launch(nproc: int, argv: list[str]) -> int:
    args = [a for a in _drop_nproc(argv)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "fer_core", *args]
    return subprocess.call(command)


def _drop_nproc(argv: list[str]):
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        yield arg
