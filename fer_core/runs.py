"""Run directories, atomic checkpoints, metric logs, and finding runs again."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fer_core.errors import CheckpointError

CHECKPOINT_FORMAT = "fer-checkpoint-1"
# What every checkpoint of `fer run` holds (None where a key does not apply), besides its task's own key
CHECKPOINT_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "ema", "rng", "counters", "recipe",
                   "classes", "versions")


def new_run_dir(out: str | Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out) / name / stamp
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{stamp}-{n}")
    (run_dir / "checkpoints").mkdir(parents=True)
    return run_dir


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    payload = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A fer checkpoint, loaded with ``weights_only=True``; one-line errors otherwise."""
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{path}: not a fer checkpoint: it is not a PyTorch archive; it may be truncated "
                              f"or from another program")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # never echo torch's advice: it suggests the unsafe loader
        if "weights only load failed" in str(exc).lower():
            raise CheckpointError(f"{path}: refused by safe loading: it holds Python objects that a fer "
                                  f"checkpoint never contains, so it was not loaded; use a checkpoint written "
                                  f"by `fer run`") from None
        raise CheckpointError(f"{path}: not a fer checkpoint: it cannot be read ({type(exc).__name__}); it may "
                              f"be truncated or from another program") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a fer checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
                              f"pass a run directory or a checkpoints/*.pt file written by `fer run`")
    return state


def resolve_checkpoint(run_or_checkpoint: str | Path, which: str = "best") -> Path:
    """A run directory -> its best (or last) checkpoint; a file stays as it is."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    for name in (which, "last", "best"):
        candidate = path / "checkpoints" / f"{name}.pt"
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{path}: no checkpoints/{which}.pt or last.pt; is this a run directory of `fer run`?")


def run_dir_of(run_or_checkpoint: str | Path) -> Path | None:
    path = Path(run_or_checkpoint)
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
            "has_gauss": has_gauss, "gauss": gauss}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsLog:
    """``metrics.jsonl`` plus TensorBoard events, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(dict(record), default=_plain) + "\n")
        prefix = record.get("kind", "train")
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def epoch_mean(self, field: str) -> float | None:
        """The mean of ``field`` over the epoch records in ``metrics.jsonl`` (None without any)."""
        if not self.enabled or not self.path.exists():
            return None
        values = [record[field] for record in map(json.loads, self.path.read_text().splitlines())
                  if record.get("kind") == "epoch" and field in record]
        return round(sum(values) / len(values), 1) if values else None

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop records of epochs that the checkpoint does not contain."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_recipe(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / "recipe.yaml").read_text())


def save_epoch_checkpoints(run_dir: Path, state: Mapping[str, Any], epoch: int, best: bool, keep: int) -> None:
    """``last.pt`` every epoch, ``best.pt`` when it improved, and the last ``keep`` epoch files.

    ``best.pt`` goes first: a run killed between the two files resumes from the previous
    ``last.pt``, redoes the epoch and writes the same ``best.pt`` again, whereas the other order
    could leave a resumed run whose best epoch has no ``best.pt``."""
    folder = run_dir / "checkpoints"
    written = None  # the file this epoch's state was written to: the others link to it (no second write)
    for path, wanted in ((folder / "best.pt", best), (folder / "last.pt", True),
                         (folder / f"epoch-{epoch:04d}.pt", bool(keep))):
        if wanted and not (written and _link_over(written, path)):
            save_checkpoint(path, state)
            written = path
    if keep:
        for old in sorted(folder.glob("epoch-*.pt"))[:-keep]:
            old.unlink()


def _link_over(source: Path, path: Path) -> bool:
    """Atomically make ``path`` a hard link to ``source`` (written files are replaced, never changed, so the
    two stay independent); False where the file system has no hard links."""
    tmp = path.with_name(f".{path.name}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
